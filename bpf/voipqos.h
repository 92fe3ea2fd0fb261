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
#define VOIPQOS_MAX_RANGES	16

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

struct port_range {
	__u16 lo;	/* host byte order, inclusive */
	__u16 hi;
};

/* voipqos_config[0], written by the daemon; all zero = classify nothing */
struct voipqos_config {
	__u32 voice_prio;	/* HTB classid major:minor for skb->priority; 0 = leave */
	__u8 dscp_mark;		/* rewrite voice packets to EF */
	__u8 trust_ef;		/* packets already marked EF are voice */
	__u8 nranges;		/* used entries of ranges[] */
	__u8 pad;
	struct port_range ranges[VOIPQOS_MAX_RANGES];
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

#endif
