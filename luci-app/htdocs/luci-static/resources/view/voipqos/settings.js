'use strict';
'require view';
'require form';
'require network';

/*
 * Settings of voipqos (/etc/config/voipqos, section 'main'), one option per entry of the
 * daemon's option table (src/voipqos/config.py OPTIONS: name, tab, datatype, default,
 * description); tests/test_luci_static.py compares the two. Save & Apply is LuCI's usual
 * apply: procd's reload trigger on the voipqos config makes the running daemon re-read it.
 */

return view.extend({
	load: function() {
		return Promise.all([ network.getNetworks(), network.getDevices() ]);
	},

	render: function(data) {
		var networks = data[0], devices = data[1];
		var m, s, o;

		m = new form.Map('voipqos', _('VoIP QoS: Settings'),
			_('Shape the line only while a VoIP call is active. Rates are in kbit/s.'));

		s = m.section(form.NamedSection, 'main', 'voipqos');
		s.addremove = false;
		s.tab('general', _('General'));
		s.tab('detection', _('Detection'));
		s.tab('classifier', _('Classifier'));
		s.tab('advanced', _('Advanced'));

		/* LuCI has no 'bool' datatype: a Flag writes 0/1 and keeps 0 (rmempty off),
		 * because an absent option would fall back to the daemon's default. */
		o = s.taboption('general', form.Flag, 'enabled', _('Enable'),
			_('Run the service (0 = installed but idle).'));
		o.default = '1';
		o.rmempty = false;

		/* Not widgets.NetworkSelect: it lists logical networks only, gives its input the
		 * uciname datatype and drops a device name set elsewhere. A combobox suggests
		 * both kinds and keeps any value it does not list. */
		o = s.taboption('general', form.Value, 'interface', _('WAN interface'),
			_('WAN logical interface (wan) or device (eth1, pppoe-wan) to shape.'));
		o.datatype = 'or(uciname,netdevname)';
		o.default = 'wan';
		networks.forEach(function(net) {
			if (net.getName() != 'loopback')
				o.value(net.getName(), _('%s (interface)').format(net.getName()));
		});
		devices.forEach(function(dev) {
			if (dev.getName() != 'lo')
				o.value(dev.getName(), _('%s (device)').format(dev.getName()));
		});

		o = s.taboption('general', form.ListValue, 'backend', _('Shaper backend'),
			_('htb: built-in HTB shaper; sqm: switch an existing sqm-scripts queue.'));
		o.value('htb', _('HTB (built in)'));
		o.value('sqm', _('SQM (sqm-scripts)'));
		o.default = 'htb';

		o = s.taboption('general', form.Value, 'upload', _('Upload rate (kbit/s)'),
			_('Upload shaping rate in kbit/s, about 90-95% of the measured line rate.'));
		o.datatype = 'and(uinteger,range(0,10000000))';
		o.default = o.placeholder = '10000';

		o = s.taboption('general', form.Value, 'download', _('Download rate (kbit/s)'),
			_('Download shaping rate in kbit/s (0 = do not shape download).'));
		o.datatype = 'and(uinteger,range(0,10000000))';
		o.default = o.placeholder = '50000';

		o = s.taboption('general', form.Value, 'voice_rate', _('Voice class rate (kbit/s)'),
			_('Bandwidth in kbit/s guaranteed to the voice class (it may borrow up to the line).'));
		o.datatype = 'and(uinteger,range(8,1000000))';
		o.default = o.placeholder = '1000';

		o = s.taboption('general', form.Value, 'drain_time', _('Drain time (s)'),
			_("Seconds after switching on with the rates at drain_rate, to empty the modem's buffer fast (0 = off)."));
		o.datatype = 'range(0,30)';
		o.default = o.placeholder = '2';

		o = s.taboption('general', form.Value, 'drain_rate', _('Drain rate (%)'),
			_('Percent of upload/download used during drain_time.'));
		o.datatype = 'and(uinteger,range(10,100))';
		o.default = o.placeholder = '50';

		o = s.taboption('general', form.Value, 'sqm_section', _('SQM queue section'),
			_('With backend sqm: the sqm queue section to switch (empty = the one on the interface).'));
		o.datatype = 'string';
		o.default = '';
		o.depends('backend', 'sqm');

		o = s.taboption('detection', form.Value, 'poll_interval', _('Poll interval (s)'),
			_('Seconds between two looks at the connection table.'));
		o.datatype = 'range(0.2,10)';
		o.default = o.placeholder = '1';

		o = s.taboption('detection', form.DynamicList, 'sip_ports', _('SIP ports'),
			_('SIP signalling ports (UDP and TCP).'));
		o.datatype = 'and(uinteger,range(1,65535))';
		o.default = [ '5060', '5061' ];

		o = s.taboption('detection', form.DynamicList, 'rtp_ports', _('RTP port ranges'),
			_('If set, only UDP flows on these ports can count as call media.'));
		o.datatype = 'portrange';
		o.default = [];

		o = s.taboption('detection', form.DynamicList, 'exclude_ports', _('Excluded ports'),
			_('UDP ports that are never call media (DNS, DHCP, NTP, NetBIOS, SSDP, mDNS).'));
		o.datatype = 'portrange';
		o.default = [ '53', '67-68', '123', '137-138', '1900', '5353' ];

		o = s.taboption('detection', form.Value, 'min_pps', _('Minimum packet rate (pps)'),
			_('Lowest packet rate of a media flow, per direction (60 ms packets = 16.7 pps).'));
		o.datatype = 'range(1,1000)';
		o.default = o.placeholder = '12';

		o = s.taboption('detection', form.Value, 'max_pps', _('Maximum packet rate (pps)'),
			_('Highest packet rate of a media flow, per direction (10 ms packets = 100 pps).'));
		o.datatype = 'range(1,5000)';
		o.default = o.placeholder = '130';

		o = s.taboption('detection', form.Value, 'min_size', _('Minimum packet size (bytes)'),
			_('Smallest mean packet size in bytes (IP header included) of a media flow.'));
		o.datatype = 'and(uinteger,range(20,1500))';
		o.default = o.placeholder = '60';

		o = s.taboption('detection', form.Value, 'max_size', _('Maximum packet size (bytes)'),
			_('Largest mean packet size in bytes of a media flow (G.711 at 20 ms is 200).'));
		o.datatype = 'and(uinteger,range(20,9000))';
		o.default = o.placeholder = '400';

		o = s.taboption('detection', form.Flag, 'both_directions', _('Require both directions'),
			_('Media must flow both ways (a call is bidirectional).'));
		o.default = '1';
		o.rmempty = false;

		o = s.taboption('detection', form.DynamicList, 'media_ports', _('Known media ports'),
			_('UDP ports documented as call media (STUN/TURN, Teams, Zoom, FaceTime, Meet): flows on them need less evidence.'));
		o.datatype = 'portrange';
		o.default = [ '3478-3481', '8801-8810', '16384-16387', '16393-16402', '19302-19309', '50000-50059' ];

		o = s.taboption('detection', form.Flag, 'header_evidence', _('Header evidence'),
			_('Count RTP and STUN headers of UDP flows with an observe-only tc-BPF program on the WAN device (also while the profile is off), as evidence of a call.'));
		o.default = '1';
		o.rmempty = false;

		o = s.taboption('detection', form.Value, 'on_polls', _('Polls to switch on'),
			_('Consecutive polls that must see a call before the profile goes on.'));
		o.datatype = 'and(uinteger,range(1,60))';
		o.default = o.placeholder = '2';

		o = s.taboption('detection', form.Value, 'off_hold', _('Off hold (s)'),
			_('Seconds without a call before the profile goes off again.'));
		o.datatype = 'range(0,3600)';
		o.default = o.placeholder = '15';

		o = s.taboption('detection', form.Value, 'min_on', _('Minimum on-time (s)'),
			_('Shortest time in seconds the profile stays on once switched on.'));
		o.datatype = 'range(0,3600)';
		o.default = o.placeholder = '30';

		o = s.taboption('classifier', form.Flag, 'dscp_mark', _('DSCP EF marking'),
			_("Mark the call's packets DSCP EF (46) so later hops and cake's diffserv see them."));
		o.default = '1';
		o.rmempty = false;

		o = s.taboption('classifier', form.Flag, 'trust_ef', _('Trust EF marks'),
			_('Also put packets that arrive already marked EF in the voice class.'));
		o.default = '0';
		o.rmempty = false;

		o = s.taboption('classifier', form.DynamicList, 'voice_ports', _('Static voice ports'),
			_('UDP port ranges always put in the voice class while the profile is on.'));
		o.datatype = 'portrange';
		o.default = [];

		o = s.taboption('advanced', form.Flag, 'conntrack_acct', _('Enable conntrack accounting'),
			_('Turn net.netfilter.nf_conntrack_acct on if it is off (new flows only).'));
		o.default = '1';
		o.rmempty = false;

		o = s.taboption('advanced', form.ListValue, 'conntrack_source', _('Connection table source'),
			_('Read the connection table over ctnetlink (default: the cost follows the UDP flows that can be calls, not the table; /proc if the kernel lacks it) or by parsing /proc/net/nf_conntrack whole every poll (docs/perf.md).'));
		o.value('proc', _('/proc/net/nf_conntrack'));
		o.value('netlink', _('ctnetlink (UDP only; needs kmod-nf-conntrack-netlink)'));
		o.default = 'netlink';

		o = s.taboption('advanced', form.Value, 'run_dir', _('Runtime directory'),
			_("Directory for the pid lock and the local endpoint's login secret."));
		o.datatype = 'directory';
		o.default = o.placeholder = '/var/run/voipqos';

		o = s.taboption('advanced', form.Value, 'rpc_listen', _('Local RPC endpoint'),
			_('Local /ubus JSON-RPC endpoint for the CLI off OpenWrt (loopback or unix socket).'));
		o.datatype = 'string';
		o.default = o.placeholder = 'unix:/var/run/voipqos/rpc.sock';

		o = s.taboption('advanced', form.ListValue, 'log_level', _('Log level'),
			_('How much the service logs.'));
		o.value('debug', _('Debug'));
		o.value('info', _('Info'));
		o.value('warning', _('Warning'));
		o.value('error', _('Error'));
		o.default = 'info';

		return m.render();
	}
});
