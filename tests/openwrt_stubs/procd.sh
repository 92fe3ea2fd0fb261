# shellcheck shell=dash
# STUB, not OpenWrt's code: procd, ubus and /lib/functions.sh cannot run here, so the
# init script is sourced after these stand-ins, which only record each call as one line
# in $CALLS. UCI values come from variables UCI_<config>_<section>_<option>;
# procd_running answers $PROCD_RUNNING (1: an instance is running).

call() { echo "$*" >>"$CALLS"; }

# /lib/functions.sh
config_load() { _cfg=$1; }
config_get() { eval "$1=\${UCI_${_cfg}_$2_$3-\$4}"; }
config_get_bool() {
	config_get "$@"
	eval "case \$$1 in 1|on|true|yes|enabled) $1=1;; 0|off|false|no|disabled) $1=0;; esac"
}

# /lib/functions/procd.sh
procd_open_instance() { call open_instance; }
procd_set_param() { call set_param "$@"; }
procd_close_instance() { call close_instance; }
procd_add_reload_trigger() { call reload_trigger "$@"; }
procd_add_interface_trigger() { call interface_trigger "$@"; }
procd_running() { call procd_running "$@"; [ "${PROCD_RUNNING:-0}" = 1 ]; }
procd_send_signal() { call procd_send_signal "$@"; }

# rc.common with USE_PROCD: start registers the instances and then the triggers; stop
# asks procd to kill (procd sends SIGTERM and returns at once), then runs service_stopped
start() { call open_service; start_service; service_triggers; call close_service; }
stop() { stop_service; procd_kill; service_stopped; }
procd_kill() { call procd_kill; }
reload() { reload_service; }
stop_service() { :; }

# commands
ubus() { call ubus "$@"; }
logger() { if [ $# -le 2 ]; then call logger "$@" "$(cat)"; else call logger "$@"; fi; }
fake_voipqos() { echo "voipqos $*"; }
