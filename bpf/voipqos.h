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
