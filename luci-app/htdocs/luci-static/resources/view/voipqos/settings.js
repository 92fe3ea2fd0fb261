'use strict';
'require view';
'require form';
'require tools.widgets as widgets';

/*
 * Settings of voipqos (/etc/config/voipqos, section 'main'). The field list mirrors the
 * daemon's option table (src/voipqos/config.py OPTIONS: name, tab, datatype, default,
 * description); tests/test_luci_static.py compares the two. Save & Apply is LuCI's usual
 * apply, which makes procd run the init script's reload trigger.
 */

var TABS = [
	[ 'general', _('General') ],
	[ 'detection', _('Detection') ],
	[ 'classifier', _('Classifier') ],
	[ 'advanced', _('Advanced') ]
];

/* [tab, widget, option, title, description, datatype, default, choices] */
var FIELDS = [
	[ 'general', 'flag', 'enabled', _('Enable'),
		_('Run the service (0 = installed but idle).'), 'bool', '1' ],
	[ 'general', 'network', 'interface', _('WAN interface'),
		_('WAN logical interface (wan) or device (eth1, pppoe-wan) to shape.'), 'string', 'wan' ],
	[ 'general', 'choice', 'backend', _('Shaper backend'),
		_('htb: built-in HTB shaper; sqm: switch an existing sqm-scripts queue.'), 'string', 'htb',
		[ [ 'htb', _('HTB (built in)') ], [ 'sqm', _('SQM (sqm-scripts)') ] ] ],
	[ 'general', 'value', 'upload', _('Upload rate (kbit/s)'),
		_('Upload shaping rate in kbit/s, about 90-95% of the measured line rate.'),
		'and(uinteger,range(0,10000000))', '10000' ],
	[ 'general', 'value', 'download', _('Download rate (kbit/s)'),
		_('Download shaping rate in kbit/s (0 = do not shape download).'),
		'and(uinteger,range(0,10000000))', '50000' ],
	[ 'general', 'value', 'voice_rate', _('Voice class rate (kbit/s)'),
		_('Bandwidth in kbit/s guaranteed to the voice class (it may borrow up to the line).'),
		'and(uinteger,range(8,1000000))', '1000' ],
	[ 'general', 'value', 'drain_time', _('Drain time (s)'),
		_("Seconds after switching on with the rates at drain_rate, to empty the modem's buffer fast (0 = off)."),
		'range(0,30)', '2' ],
	[ 'general', 'value', 'drain_rate', _('Drain rate (%)'),
		_('Percent of upload/download used during drain_time.'),
		'and(uinteger,range(10,100))', '50' ],
	[ 'general', 'value', 'sqm_section', _('SQM queue section'),
		_('With backend sqm: the sqm queue section to switch (empty = the one on the interface).'),
		'string', '' ],

	[ 'detection', 'value', 'poll_interval', _('Poll interval (s)'),
		_('Seconds between two looks at the connection table.'), 'range(0.2,10)', '1' ],
	[ 'detection', 'list', 'sip_ports', _('SIP ports'),
		_('SIP signalling ports (UDP and TCP).'), 'and(uinteger,range(1,65535))', [ '5060', '5061' ] ],
	[ 'detection', 'list', 'rtp_ports', _('RTP port ranges'),
		_('If set, only UDP flows on these ports can count as call media.'), 'portrange', [] ],
	[ 'detection', 'list', 'exclude_ports', _('Excluded ports'),
		_('UDP ports that are never call media (DNS, DHCP, NTP, NetBIOS, SSDP, mDNS).'),
		'portrange', [ '53', '67-68', '123', '137-138', '1900', '5353' ] ],
	[ 'detection', 'value', 'min_pps', _('Minimum packet rate (pps)'),
		_('Lowest packet rate of a media flow, per direction (60 ms packets = 16.7 pps).'),
		'range(1,1000)', '12' ],
	[ 'detection', 'value', 'max_pps', _('Maximum packet rate (pps)'),
		_('Highest packet rate of a media flow, per direction (10 ms packets = 100 pps).'),
		'range(1,5000)', '130' ],
	[ 'detection', 'value', 'min_size', _('Minimum packet size (bytes)'),
		_('Smallest mean packet size in bytes (IP header included) of a media flow.'),
		'and(uinteger,range(20,1500))', '60' ],
	[ 'detection', 'value', 'max_size', _('Maximum packet size (bytes)'),
		_('Largest mean packet size in bytes of a media flow (G.711 at 20 ms is 200).'),
		'and(uinteger,range(20,9000))', '400' ],
	[ 'detection', 'flag', 'both_directions', _('Require both directions'),
		_('Media must flow both ways (a call is bidirectional).'), 'bool', '1' ],
	[ 'detection', 'list', 'media_ports', _('Known media ports'),
		_('UDP ports documented as call media (STUN/TURN, Teams, Zoom, FaceTime, Meet): flows on them need less evidence.'),
		'portrange', [ '3478-3481', '8801-8810', '16384-16387', '16393-16402', '19302-19309', '50000-50059' ] ],
	[ 'detection', 'value', 'on_polls', _('Polls to switch on'),
		_('Consecutive polls that must see a call before the profile goes on.'),
		'and(uinteger,range(1,60))', '2' ],
	[ 'detection', 'value', 'off_hold', _('Off hold (s)'),
		_('Seconds without a call before the profile goes off again.'), 'range(0,3600)', '15' ],
	[ 'detection', 'value', 'min_on', _('Minimum on-time (s)'),
		_('Shortest time in seconds the profile stays on once switched on.'),
		'range(0,3600)', '30' ],

	[ 'classifier', 'flag', 'dscp_mark', _('DSCP EF marking'),
		_("Mark the call's packets DSCP EF (46) so later hops and cake's diffserv see them."),
		'bool', '1' ],
	[ 'classifier', 'flag', 'trust_ef', _('Trust EF marks'),
		_('Also put packets that arrive already marked EF in the voice class.'), 'bool', '0' ],
	[ 'classifier', 'list', 'voice_ports', _('Static voice ports'),
		_('UDP port ranges always put in the voice class while the profile is on.'),
		'portrange', [] ],

	[ 'advanced', 'flag', 'conntrack_acct', _('Enable conntrack accounting'),
		_('Turn net.netfilter.nf_conntrack_acct on if it is off (new flows only).'), 'bool', '1' ],
	[ 'advanced', 'choice', 'conntrack_source', _('Connection table source'),
		_('Read the connection table from /proc (default) or a UDP-filtered ctnetlink dump (measure both on your router: bench/conntrack_poll.py).'),
		'string', 'proc',
		[ [ 'proc', _('/proc/net/nf_conntrack') ], [ 'netlink', _('ctnetlink (UDP only)') ] ] ],
	[ 'advanced', 'value', 'run_dir', _('Runtime directory'),
		_("Directory for the pid lock and the local endpoint's login secret."),
		'directory', '/var/run/voipqos' ],
	[ 'advanced', 'value', 'rpc_listen', _('Local RPC endpoint'),
		_('Local /ubus JSON-RPC endpoint for the CLI off OpenWrt (loopback or unix socket).'),
		'string', 'unix:/var/run/voipqos/rpc.sock' ],
	[ 'advanced', 'choice', 'log_level', _('Log level'),
		_('How much the service logs.'), 'string', 'info',
		[ [ 'debug', _('Debug') ], [ 'info', _('Info') ], [ 'warning', _('Warning') ],
		  [ 'error', _('Error') ] ] ]
];

var WIDGETS = {
	flag: form.Flag,
	value: form.Value,
	list: form.DynamicList,
	choice: form.ListValue,
	network: widgets.NetworkSelect
};

return view.extend({
	render: function() {
		var m = new form.Map('voipqos', _('VoIP QoS: Settings'),
			_('Shape the line only while a VoIP call is active. Rates are in kbit/s.'));

		var s = m.section(form.NamedSection, 'main', 'voipqos');
		s.addremove = false;
		TABS.forEach(function(t) { s.tab(t[0], t[1]); });

		FIELDS.forEach(function(f) {
			var o = s.taboption(f[0], WIDGETS[f[1]], f[2], f[3], f[4]);

			o.default = f[6];

			/* LuCI has no 'bool' datatype: a Flag writes 0/1 and keeps 0 (rmempty off),
			 * because an absent option would fall back to the daemon's default. */
			if (f[1] == 'flag')
				o.rmempty = false;
			else
				o.datatype = f[5];

			if (f[1] == 'value') {
				o.placeholder = f[6];
			}
			else if (f[1] == 'choice') {
				f[7].forEach(function(c) { o.value(c[0], c[1]); });
			}
			else if (f[1] == 'network') {
				o.nocreate = false;
			}
		});

		s.children.filter(function(o) { return o.option == 'sqm_section'; })[0]
			.depends('backend', 'sqm');

		return m.render();
	}
});
