/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * The map layouts voipqos.c shares with the daemon. The daemon does not mirror them: it
 * reads every struct below (names, offsets, sizes, array lengths, __be16 fields) from
 * the object's BTF (src/voipqos/btf.py, classifier_maps.py), so a field added here is
 * seen by both sides, and a field the daemon writes but cannot find is a load error.
 */
#ifndef VOIPQOS_H
#define VOIPQOS_H

#define VOIPQOS_MAX_FLOWS	1024
#define VOIPQOS_PORT_WORDS	(65536 / 64)

/* key of voipqos_flows: addresses as 16 bytes (IPv4 as ::ffff:a.b.c.d), all fields in
 * network byte order, padding zero */
struct flow_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* voipqos_config[0], written by the daemon; all zero = classify nothing */
struct voipqos_config {
	__u32 voice_prio;	/* HTB classid major:minor for skb->priority; 0 = leave */
	__u8 dscp_mark;		/* rewrite voice packets to EF */
	__u8 trust_ef;		/* packets already marked EF are voice */
	__u8 pad[2];
};

/* voipqos_ports[0]: port sets as bitmaps (bit p % 64 of word p / 64, port in host
 * order), so a packet is tested in constant time whatever the number of ranges or
 * flows: a non-call packet (TCP above all) costs two bit tests, no hash lookup. */
struct voipqos_ports {
	__u64 voice[VOIPQOS_PORT_WORDS];	/* static voice port ranges (UDP, either port) */
	__u64 flows[VOIPQOS_PORT_WORDS];	/* every port of voipqos_flows' keys */
};

/*
 * Call quality, per flow-table entry and direction at the WAN device, from the RTP
 * header (in clear text in SRTP too): RFC 3550 A.1's sequence accounting and A.8's
 * interarrival jitter, in the kernel so no packet is copied to the daemon. The daemon
 * derives loss = expected - received (src/voipqos/quality.py). Reset with the entry:
 * a flow that leaves the table and comes back starts from zero.
 */
#define RTP_PROBATION		4	/* packets in sequence, one SSRC: it is RTP */
#define RTP_MAX_DROPOUT		3000	/* a larger jump forward restarts the sequence */
#define RTP_MAX_MISORDER	100	/* a later packet further back restarts too */
#define RTP_SSRC_TIMEOUT_NS	1000000000ULL	/* silent that long: a new SSRC may take over */
#define RTP_RATE_WINDOW_NS	1000000000ULL	/* dynamic payload types: clock rate from 1 s */

enum { DIR_EGRESS, DIR_INGRESS, DIR_MAX };	/* leaving / arriving through the WAN */
enum { RTP_NONE, RTP_PROBING, RTP_LOCKED };

/* RTCP going this way (plain RTCP; SRTCP encrypts it): the last sender report's NTP
 * time, which the peer's report echoes as LSR (round trip = arrival of that report -
 * arrival of the SR - DLSR), and the first report block of the last SR/RR: what the
 * endpoint sending it says about the stream it receives (RFC 3550 6.4) */
struct rtcp_report {
	__u64 sr_ns;		/* arrival of the last SR */
	__u64 block_ns;		/* arrival of the last report block */
	__u32 sr_ntp_mid;	/* the SR's NTP timestamp, middle 32 bits */
	__u32 srs;		/* SRs seen */
	__u32 reports;		/* report blocks seen */
	__u32 ssrc;		/* the stream reported on (SSRC_n) */
	__u32 cum_lost;		/* cumulative number of packets lost (24-bit, signed) */
	__u32 ext_max_seq;	/* extended highest sequence number received */
	__u32 jitter;		/* interarrival jitter, RTP timestamp units */
	__u32 lsr;		/* middle 32 bits of the last SR it received */
	__u32 dlsr;		/* delay since that SR, 1/65536 s */
	__u8 fraction_lost;	/* since the previous report, in 1/256 */
	__u8 pad[3];
};

struct rtp_dir {
	__u64 packets;		/* every packet of the flow this way (GSO segments) */
	__u64 bytes;
	__u64 last_ns;		/* arrival of the last RTP packet of the locked SSRC */
	__u64 first_ns;		/* arrival when the SSRC was locked: clock rate estimate */
	__u64 seen;		/* bit i: sequence max_seq - i arrived (duplicates vs late) */
	__u64 jitter16_ns;	/* RFC 3550 J in nanoseconds, times 16 (A.8) */
	__u32 ssrc;
	__u32 cycles;		/* sequence wrap-arounds, times 65536 */
	__u32 base_seq;		/* extended sequence number of the first counted packet */
	__u32 received;		/* distinct sequence numbers that arrived since base_seq */
	__u32 expected_prior;	/* expected and received of earlier sequence runs/SSRCs */
	__u32 received_prior;
	__u32 duplicates;
	__u32 reordered;	/* arrived after a later sequence number */
	__u32 other_ssrc;	/* packets of other SSRCs (bundled video, RTX): not counted */
	__u32 restarts;		/* SSRC changes and sequence jumps */
	__u32 last_ts;		/* RTP timestamp of the packet at last_ns */
	__u32 first_ts;
	__u32 clock_hz;		/* RTP clock: static payload type, or estimated; 0 unknown */
	__u16 max_seq;
	__u16 bad_seq;		/* a jump to here, confirmed by the next packet, restarts */
	__u8 state;		/* RTP_NONE, RTP_PROBING (probation left), RTP_LOCKED */
	__u8 probation;
	__u8 pt;		/* payload type of the locked SSRC */
	__u8 pad[5];
	struct rtcp_report rtcp;
};

/* value of voipqos_flows. No bpf_spin_lock: it needs the map's BTF in the kernel, and
 * the kernel refuses the BTF that OpenWrt's CompileBPF makes for 32-bit targets (the
 * front end runs for mips/mipsel). Each direction is written by the CPU handling that
 * flow's packets (one RX queue per flow, RSS/RPS hash on the 5-tuple), so unlocked
 * updates stay exact in practice. */
struct flow_state {
	struct rtp_dir dir[DIR_MAX];
};

/* packets count GSO segments (what goes on the wire), bytes the skb's length */
struct counter {
	__u64 packets;
	__u64 bytes;
};

/* voipqos_stats[0], per CPU */
struct voipqos_stats {
	struct counter voice;
	struct counter other;
};

/*
 * The observer (voipqos_obs_eth, voipqos_obs_l3): RTP/STUN evidence from the first 12
 * bytes of UDP payloads, per flow and direction, attached while the profile is off too. It is the C
 * form of src/voipqos/header_evidence.py (the specification; a kernel test feeds both
 * the same packets). Key: the flow as a packet arriving at the WAN device carries it,
 * which is conntrack's reply tuple (src, sport, dport) with or without NAT.
 */
#define VOIPQOS_SEEN_FLOWS	2048
#define RTP_CHAIN_GAP		64	/* sequence numbers a chained packet may skip */
#define STUN_COOKIE		0x2112A442

enum { SEEN_OUT, SEEN_IN, SEEN_DIRS };	/* leaving / arriving through the WAN device */

/* key of voipqos_seen: network byte order, IPv4 as ::ffff:a.b.c.d */
struct seen_key {
	__u32 far_addr[4];
	__be16 far_port;
	__be16 near_port;
};

struct seen_dir {
	__u32 ssrc[2];		/* two streams (audio + video bundled on one 5-tuple) */
	__u32 rtp;		/* packets continuing a stream (wrapping counter) */
	__u32 stun;		/* STUN/TURN messages (wrapping counter) */
	__u16 seq[2];		/* last sequence number per slot */
	__u8 used;		/* bit i: slot i holds an SSRC */
	__u8 last;		/* the slot matched or filled most recently */
	__u8 pad[2];
};

/* value of voipqos_seen; unlocked like flow_state (one CPU per flow and direction) */
struct seen_flow {
	struct seen_dir dir[SEEN_DIRS];
};

#endif
