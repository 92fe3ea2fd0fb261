// SPDX-License-Identifier: GPL-2.0-only
/*
 * voipqos call classifier: a tc (cls_bpf, direct-action) program for the WAN device.
 *
 * A packet is "voice" when its 5-tuple or the reversed 5-tuple is in voipqos_flows
 * (the daemon fills it with the conntrack orig AND reply tuples of detected calls),
 * when it is UDP with a source or destination port in a static range, or (trust_ef)
 * when it already carries DSCP EF. Which tuple matches where, with IPv4 NAT:
 *   orig  = lan:p  -> far:q      reply = far:q -> wan_ip:p'
 *   WAN egress  (post-SNAT) sees wan_ip:p' -> far:q  = reply reversed (2nd lookup)
 *   WAN ingress (pre-DNAT)  sees far:q -> wan_ip:p'  = reply         (1st lookup)
 *   LAN-side hooks see orig or orig reversed; without NAT (IPv6) both tuples match.
 *
 * Voice packets get skb->priority = voice_prio (a full HTB classid major:minor) and
 * DSCP EF with the ECN bits kept. skb->priority, not tc_classid, because HTB consults
 * skb->priority before its own filters (htb_classify) when the major equals its handle,
 * so this program can sit on clsact (before the root qdisc and before the ingress
 * mirred redirect to the IFB, which keeps skb->priority) and return TC_ACT_UNSPEC:
 * later filters still run and nothing here depends on the HTB filter chain. A
 * tc_classid result would only reach HTB from a filter attached inside HTB itself.
 * voice_prio 0 leaves priority alone (the SQM backend only wants the EF mark).
 * Everything else is left untouched. All reads go through bpf_skb_load_bytes, so
 * non-linear skbs and truncated headers are handled without direct packet access.
 */
#if __has_include(<uapi/linux/bpf.h>)	/* OpenWrt CompileBPF: kernel source tree */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#else					/* linux-libc-dev */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#endif
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "voipqos.h"

#define VOIPQOS_MAX_EXTHDRS	6
#define DSCP_EF			46

#define ETH_HLEN		14
#define ETH_P_IP		0x0800
#define ETH_P_IPV6		0x86DD
#define ETH_P_8021Q		0x8100
#define ETH_P_8021AD		0x88A8
#define IPPROTO_HOPOPTS		0
#define IPPROTO_TCP		6
#define IPPROTO_UDP		17
#define IPPROTO_ROUTING		43
#define IPPROTO_FRAGMENT	44
#define IPPROTO_AH		51
#define IPPROTO_DSTOPTS		60

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct flow_key);
	__type(value, struct flow_state);
	__uint(max_entries, VOIPQOS_MAX_FLOWS);
	__uint(map_flags, BPF_F_NO_PREALLOC);	/* memory for the flows in it, not 1024 */
} voipqos_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct voipqos_config);
	__uint(max_entries, 1);
} voipqos_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct voipqos_ports);
	__uint(max_entries, 1);
} voipqos_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, __u32);
	__type(value, struct voipqos_stats);
	__uint(max_entries, 1);
} voipqos_stats SEC(".maps");

/* what the L3/L4 parsers found */
struct pkt {
	struct flow_key key;
	__u32 l3;		/* offset of the IP header */
	__u8 dsfield;		/* IPv4 TOS / IPv6 traffic class */
	__u8 ipv6;
	__u8 has_ports;
	__u32 l4;		/* offset of the UDP/TCP header when has_ports */
};

/* packets on the wire: a GSO/GRO aggregate is gso_segs of them */
static __always_inline __u64 segments(struct __sk_buff *skb)
{
	return skb->gso_segs > 1 ? skb->gso_segs : 1;
}

static __always_inline void count(struct __sk_buff *skb, int voice)
{
	__u32 zero = 0;
	struct voipqos_stats *s = bpf_map_lookup_elem(&voipqos_stats, &zero);
	struct counter *c;

	if (!s)
		return;
	c = voice ? &s->voice : &s->other;
	c->packets += segments(skb);
	c->bytes += skb->len;
}

/* len bytes at off: straight from the linear head when it holds them (the usual case,
 * and much cheaper than a helper call), else through bpf_skb_load_bytes (paged data) */
static __always_inline int load(struct __sk_buff *skb, __u32 off, void *to, const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off < 0x1000 && data + off + len <= end) {
		__builtin_memcpy(to, data + off, len);
		return 0;
	}
	return bpf_skb_load_bytes(skb, off, to, len);
}

/* len bytes at off to read in place: a pointer into the linear head when it holds them,
 * else buf filled by bpf_skb_load_bytes; NULL if the packet is shorter */
static __always_inline const __u8 *peek(struct __sk_buff *skb, __u32 off, __u8 *buf,
					const __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;

	if (off < 0x1000 && data + off + len <= end)
		return data + off;
	return bpf_skb_load_bytes(skb, off, buf, len) ? NULL : buf;
}

/* L4 ports at off (UDP and TCP both start with source, destination) */
static __always_inline void load_ports(struct __sk_buff *skb, __u32 off, struct pkt *p)
{
	__be16 ports[2];

	if (p->key.proto != IPPROTO_UDP && p->key.proto != IPPROTO_TCP)
		return;
	if (load(skb, off, ports, sizeof(ports)))
		return;
	p->key.sport = ports[0];
	p->key.dport = ports[1];
	p->has_ports = 1;
	p->l4 = off;
}

static __always_inline int parse_ipv4(struct __sk_buff *skb, struct pkt *p)
{
	__u8 buf[20];	/* fixed IPv4 header, read as bytes: no endian-dependent bitfields */
	const __u8 *h = peek(skb, p->l3, buf, sizeof(buf));
	__u32 ihl;

	if (!h)
		return -1;
	ihl = (h[0] & 0x0f) * 4;
	if ((h[0] >> 4) != 4 || ihl < sizeof(buf))
		return -1;
	p->dsfield = h[1];
	p->key.proto = h[9];
	p->key.saddr[2] = bpf_htonl(0x0000ffff);
	__builtin_memcpy(&p->key.saddr[3], &h[12], 4);
	p->key.daddr[2] = bpf_htonl(0x0000ffff);
	__builtin_memcpy(&p->key.daddr[3], &h[16], 4);
	/* a non-first fragment carries no L4 header */
	if (((h[6] & 0x1f) | h[7]) == 0)
		load_ports(skb, p->l3 + ihl, p);
	return 0;
}

/* the offset of the IPv6 upper-layer header after the extension headers starting at off
 * (*next: the first one's type, then the upper layer's); -1 truncated or too many.
 * *frag: 0 no fragment header, 1 a first fragment, 2 a later one (no L4 header). */
static __always_inline int ipv6_upper(struct __sk_buff *skb, __u32 off, __u8 *next,
				      __u8 *frag)
{
	int i;

	*frag = 0;
#pragma unroll
	for (i = 0; i < VOIPQOS_MAX_EXTHDRS; i++) {
		__u8 ext[4];	/* next header, length, and for a fragment its offset */

		if (*next != IPPROTO_HOPOPTS && *next != IPPROTO_ROUTING &&
		    *next != IPPROTO_DSTOPTS && *next != IPPROTO_FRAGMENT && *next != IPPROTO_AH)
			return off;
		if (load(skb, off, ext, sizeof(ext)))
			return -1;
		if (*next == IPPROTO_FRAGMENT) {
			*frag = (ext[2] << 5 | ext[3] >> 3) != 0 ? 2 : 1;
			if (*frag == 2)
				return off;
			off += 8;
		} else if (*next == IPPROTO_AH) {
			off += (ext[1] + 2) * 4;
		} else {
			off += (ext[1] + 1) * 8;
		}
		*next = ext[0];
	}
	return *next == IPPROTO_HOPOPTS || *next == IPPROTO_ROUTING ||
	       *next == IPPROTO_DSTOPTS || *next == IPPROTO_FRAGMENT || *next == IPPROTO_AH ?
	       -1 : (int)off;
}

static __always_inline int parse_ipv6(struct __sk_buff *skb, struct pkt *p)
{
	__u8 h[8];	/* version/class/label, payload length, next header, hop limit */
	__u8 next, frag;
	int off;

	if (load(skb, p->l3, h, sizeof(h)) ||
	    load(skb, p->l3 + 8, p->key.saddr, 32))
		return -1;
	if ((h[0] >> 4) != 6)
		return -1;
	p->ipv6 = 1;
	p->dsfield = (h[0] << 4) | (h[1] >> 4);
	next = h[6];
	off = ipv6_upper(skb, p->l3 + 40, &next, &frag);
	if (off < 0 || frag == 2)
		return 0;	/* truncated or a non-first fragment: addresses/DSCP only */
	p->key.proto = next;
	load_ports(skb, off, p);
	return 0;
}

static __always_inline int in_set(const __u64 *set, __be16 port)
{
	__u16 p = bpf_ntohs(port);

	return (set[(p >> 6) & (VOIPQOS_PORT_WORDS - 1)] >> (p & 63)) & 1;
}

/* the flow table's entry for the packet's tuple or its reverse, NULL if neither */
static __always_inline struct flow_state *find_flow(const struct voipqos_ports *ports,
						    const struct pkt *p)
{
	struct flow_state *st;
	struct flow_key rev;

	/* a flow (either way round) has both of the packet's ports */
	if (!in_set(ports->flows, p->key.sport) || !in_set(ports->flows, p->key.dport))
		return NULL;
	st = bpf_map_lookup_elem(&voipqos_flows, &p->key);
	if (st)
		return st;
	rev = p->key;
	__builtin_memcpy(rev.saddr, p->key.daddr, 16);
	__builtin_memcpy(rev.daddr, p->key.saddr, 16);
	rev.sport = p->key.dport;
	rev.dport = p->key.sport;
	return bpf_map_lookup_elem(&voipqos_flows, &rev);
}

/* voice: a flow of the table (*flow then points at its state), a static voice port,
 * or a trusted EF mark */
static __always_inline int is_voice(const struct voipqos_config *cfg, const struct pkt *p,
				    struct flow_state **flow)
{
	struct voipqos_ports *ports;
	__u32 zero = 0;

	if (p->has_ports) {
		ports = bpf_map_lookup_elem(&voipqos_ports, &zero);
		if (!ports)
			return 0;
		*flow = find_flow(ports, p);
		if (*flow)
			return 1;
		if (p->key.proto == IPPROTO_UDP &&
		    (in_set(ports->voice, p->key.sport) || in_set(ports->voice, p->key.dport)))
			return 1;
	}
	return cfg->trust_ef && (p->dsfield >> 2) == DSCP_EF;
}

/* --- call quality: RFC 3550 sequence accounting and jitter (voipqos.h) -------------- */

struct rtp_hdr {
	__u32 ts;
	__u32 ssrc;
	__u16 seq;
	__u8 pt;
};

/* clock rate of a static payload type (RFC 3551); 0 for dynamic ones */
static __always_inline __u32 static_clock_hz(__u8 pt)
{
	switch (pt) {
	case 0: case 3: case 4: case 5: case 7: case 8: case 9: case 12: case 13: case 15:
	case 18:
		return 8000;
	case 6:
		return 16000;
	case 16:
		return 11025;
	case 17:
		return 22050;
	case 10: case 11:
		return 44100;
	case 14: case 25: case 26: case 28: case 31: case 32: case 33: case 34:
		return 90000;
	}
	return 0;
}

#define TICK_Q16(hz)	((1000000000ULL << 16) / (hz))

/* nanoseconds per RTP tick, times 2^16 (a multiplication, no division per packet) */
static __always_inline __u64 tick_ns_q16(__u32 hz)
{
	switch (hz) {
	case 8000: return TICK_Q16(8000);
	case 11025: return TICK_Q16(11025);
	case 16000: return TICK_Q16(16000);
	case 22050: return TICK_Q16(22050);
	case 24000: return TICK_Q16(24000);
	case 32000: return TICK_Q16(32000);
	case 44100: return TICK_Q16(44100);
	case 48000: return TICK_Q16(48000);
	case 90000: return TICK_Q16(90000);
	}
	return 0;
}

/* the usual RTP clock within 1/8 of dts ticks per dns nanoseconds, else 0 */
static __always_inline __u32 estimate_clock_hz(__u64 dns, __u32 dts)
{
	const __u32 rates[] = { 8000, 16000, 24000, 32000, 48000, 90000 };
	__u64 ticks_ns = (__u64)dts * 1000000000ULL;
	int i;

#pragma unroll
	for (i = 0; i < 6; i++) {
		__u64 want = dns * rates[i];
		__u64 err = ticks_ns > want ? ticks_ns - want : want - ticks_ns;

		if (err * 8 < want)
			return rates[i];
	}
	return 0;
}

/* RFC 3550 A.8 in nanoseconds: D = arrival spacing - timestamp spacing, J += (|D| - J)/16
 * (kept as 16 J). Arrival order, as the RFC says; no sample across a clock jump. */
static __always_inline void rtp_jitter(struct rtp_dir *r, __u64 now, __u32 ts)
{
	__u64 q16 = tick_ns_q16(r->clock_hz);
	__s32 dts = ts - r->last_ts;
	__s64 d;

	if (q16 && dts > -(1 << 24) && dts < (1 << 24)) {
		d = (__s64)(now - r->last_ns) - (((__s64)dts * (__s64)q16) >> 16);
		if (d < 0)
			d = -d;
		r->jitter16_ns += d - ((r->jitter16_ns + 8) >> 4);
	}
	r->last_ns = now;
	r->last_ts = ts;
}

/* close the current sequence run: its counts go to the prior totals */
static __always_inline void rtp_fold(struct rtp_dir *r)
{
	r->expected_prior += r->cycles + r->max_seq - r->base_seq + 1;
	r->received_prior += r->received;
	r->received = 0;
	r->restarts++;
}

/* start counting at seq, `run` packets in sequence already arrived (cycles starts at
 * 65536 so base_seq never goes below zero) */
static __always_inline void rtp_start(struct rtp_dir *r, const struct rtp_hdr *h, __u64 now,
				      __u32 run)
{
	r->cycles = 65536;
	r->base_seq = r->cycles + h->seq - (run - 1);
	r->received = run;
	r->seen = (1ULL << run) - 1;
	r->max_seq = h->seq;
	r->bad_seq = h->seq + 0x8000;
	r->last_ns = now;
	r->last_ts = h->ts;
}

/* one RTP packet of this direction */
static __always_inline void rtp_update(struct rtp_dir *r, const struct rtp_hdr *h, __u64 now)
{
	__u16 delta;

	if (r->state == RTP_LOCKED && h->ssrc != r->ssrc) {
		if (now - r->last_ns < RTP_SSRC_TIMEOUT_NS) {
			r->other_ssrc++;	/* bundled stream next to the locked one */
			return;
		}
		rtp_fold(r);		/* the locked stream went silent: a new one */
		r->state = RTP_NONE;
	}
	if (r->state == RTP_PROBING && h->ssrc != r->ssrc &&
	    now - r->last_ns < RTP_SSRC_TIMEOUT_NS) {
		r->other_ssrc++;	/* the first stream seen is the one measured */
		return;
	}
	if (r->state != RTP_LOCKED) {
		r->last_ns = now;
		if (r->state == RTP_PROBING && h->ssrc == r->ssrc &&
		    h->seq == (__u16)(r->max_seq + 1)) {
			r->max_seq = h->seq;
			if (--r->probation)
				return;
			r->state = RTP_LOCKED;
			r->pt = h->pt;
			r->clock_hz = static_clock_hz(h->pt);
			r->first_ns = now;
			r->first_ts = h->ts;
			rtp_start(r, h, now, RTP_PROBATION);
			return;
		}
		r->state = RTP_PROBING;
		r->ssrc = h->ssrc;
		r->max_seq = h->seq;
		r->probation = RTP_PROBATION - 1;
		return;
	}
	delta = h->seq - r->max_seq;
	if (delta == 0) {
		r->duplicates++;
	} else if (delta < RTP_MAX_DROPOUT) {		/* in order, maybe after a gap */
		if (h->seq < r->max_seq)
			r->cycles += 65536;
		r->seen = delta >= 64 ? 1 : (r->seen << delta) | 1;
		r->max_seq = h->seq;
		r->received++;
		if (!r->clock_hz && now - r->first_ns >= RTP_RATE_WINDOW_NS)
			r->clock_hz = estimate_clock_hz(now - r->first_ns, h->ts - r->first_ts);
		rtp_jitter(r, now, h->ts);
	} else if (delta > (__u16)(0x10000 - RTP_MAX_MISORDER)) {	/* late */
		__u16 back = r->max_seq - h->seq;

		if (back < 64) {
			if ((r->seen >> back) & 1) {
				r->duplicates++;
				return;
			}
			r->seen |= 1ULL << back;
		}
		r->reordered++;
		r->received++;
		rtp_jitter(r, now, h->ts);
	} else if (h->seq == r->bad_seq) {	/* a jump, confirmed: new sequence run */
		rtp_fold(r);
		rtp_start(r, h, now, 1);
	} else {
		r->bad_seq = h->seq + 1;
	}
}

static __always_inline __u32 be32_at(const __u8 *b)
{
	return (__u32)b[0] << 24 | (__u32)b[1] << 16 | (__u32)b[2] << 8 | b[3];
}

/* an RTCP SR (type 200) or RR (201) at off going this way (struct rtcp_report) */
static __always_inline void rtcp_update(struct __sk_buff *skb, __u32 off, const __u8 *b,
					struct rtcp_report *c)
{
	__u8 buf[24];
	const __u8 *x;
	__u64 now;

	if (b[1] != 200 && b[1] != 201)
		return;
	now = bpf_ktime_get_ns();
	if (b[1] == 200) {
		x = peek(skb, off + 8, buf, 8);		/* NTP timestamp, 64 bits */
		if (x) {
			c->sr_ntp_mid = be32_at(x + 2);
			c->sr_ns = now;
			c->srs++;
		}
	}
	if ((b[0] & 0x1f) == 0)
		return;
	x = peek(skb, off + (b[1] == 200 ? 28 : 8), buf, sizeof(buf));
	if (!x)
		return;
	c->ssrc = be32_at(x);
	c->fraction_lost = x[4];
	c->cum_lost = be32_at(x + 4) & 0xffffff;
	c->ext_max_seq = be32_at(x + 8);
	c->jitter = be32_at(x + 12);
	c->lsr = be32_at(x + 16);
	c->dlsr = be32_at(x + 20);
	c->block_ns = now;
	c->reports++;
}

/* per-direction counters of a call flow, its RTP quality when it carries RTP, and the
 * RTCP going the same way */
static __always_inline void measure(struct __sk_buff *skb, const struct pkt *p,
				    struct flow_state *st, __u64 segs)
{
	__u32 dir = skb->ingress_ifindex == skb->ifindex ? DIR_INGRESS : DIR_EGRESS;
	struct rtp_dir *r = &st->dir[dir & 1];
	const __u8 *b = NULL;
	struct rtp_hdr h;
	__u8 buf[12];

	r->packets += segs;
	r->bytes += skb->len;
	if (p->key.proto == IPPROTO_UDP)
		b = peek(skb, p->l4 + 8, buf, sizeof(buf));
	if (!b || (b[0] >> 6) != 2)
		return;
	if ((b[1] & 0x7f) >= 72 && (b[1] & 0x7f) <= 76) {	/* RFC 5761: types 200-204 */
		rtcp_update(skb, p->l4 + 8, b, &r->rtcp);
		return;
	}
	h.pt = b[1] & 0x7f;
	h.seq = (__u16)b[2] << 8 | b[3];
	h.ts = be32_at(b + 4);
	h.ssrc = be32_at(b + 8);
	rtp_update(r, &h, bpf_ktime_get_ns());
}

/* DSCP := EF, ECN bits kept. IPv4: the TOS change and the header checksum change cancel
 * in the one's-complement sum, so a CHECKSUM_COMPLETE skb->csum stays right. IPv6 has no
 * header checksum; BPF_F_RECOMPUTE_CSUM keeps skb->csum right there. */
static __always_inline void mark_ef(struct __sk_buff *skb, const struct pkt *p)
{
	__u8 ds = (DSCP_EF << 2) | (p->dsfield & 0x03);
	__u8 w[2];

	if (p->dsfield == ds || load(skb, p->l3, w, sizeof(w)))
		return;
	if (p->ipv6) {
		__u8 n[2] = { (w[0] & 0xf0) | (ds >> 4), (ds << 4) | (w[1] & 0x0f) };

		bpf_skb_store_bytes(skb, p->l3, n, sizeof(n), BPF_F_RECOMPUTE_CSUM);
	} else {
		__u8 n[2] = { w[0], ds };
		__u16 from, to;

		__builtin_memcpy(&from, w, 2);
		__builtin_memcpy(&to, n, 2);
		bpf_l3_csum_replace(skb, p->l3 + 10, from, to, sizeof(__u16));
		bpf_skb_store_bytes(skb, p->l3 + 1, &ds, 1, 0);
	}
}

static __always_inline int classify(struct __sk_buff *skb, __u32 l3, __u16 proto)
{
	__u32 zero = 0;
	struct voipqos_config *cfg = bpf_map_lookup_elem(&voipqos_config, &zero);
	struct flow_state *flow = NULL;
	struct pkt p = { .l3 = l3 };
	int err;

	if (!cfg)
		return TC_ACT_UNSPEC;
	if (proto == ETH_P_IP)
		err = parse_ipv4(skb, &p);
	else if (proto == ETH_P_IPV6)
		err = parse_ipv6(skb, &p);
	else
		err = -1;
	if (err || !is_voice(cfg, &p, &flow)) {
		count(skb, 0);
		return TC_ACT_UNSPEC;
	}
	if (cfg->voice_prio)
		skb->priority = cfg->voice_prio;
	if (cfg->dscp_mark)
		mark_ef(skb, &p);
	count(skb, 1);
	if (flow)
		measure(skb, &p, flow, segments(skb));
	return TC_ACT_UNSPEC;	/* let later filters (the IFB redirect) run */
}

/* the ethertype after up to two VLAN tags in the packet (an offloaded tag is not);
 * *l3 the offset of the L3 header; 0 truncated */
static __always_inline __u16 eth_type(struct __sk_buff *skb, __u32 *l3)
{
	__u32 off = 12;
	__be16 type;
	int i;

#pragma unroll
	for (i = 0; i < 3; i++) {
		if (load(skb, off, &type, sizeof(type)))
			return 0;
		if (type != bpf_htons(ETH_P_8021Q) && type != bpf_htons(ETH_P_8021AD))
			break;
		off += 4;
	}
	*l3 = off + 2;
	return bpf_ntohs(type);
}

/* Ethernet devices */
SEC("tc")
int voipqos_eth(struct __sk_buff *skb)
{
	__u32 l3 = 0;
	__u16 type = eth_type(skb, &l3);

	if (!type) {
		count(skb, 0);
		return TC_ACT_UNSPEC;
	}
	return classify(skb, l3, type);
}

/* devices without a link-layer header (pppoe-wan, wireguard, tun): data starts at IP */
SEC("tc_l3")
int voipqos_l3(struct __sk_buff *skb)
{
	return classify(skb, 0, bpf_ntohs(skb->protocol));
}

/* --- the observer: header evidence while the profile is off (voipqos.h) ------------- */

#define DNS_PORT		53	/* header_evidence.DNS_PORT: never an entry */

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
	__type(key, struct seen_key);
	__type(value, struct seen_flow);
	__uint(max_entries, VOIPQOS_SEEN_FLOWS);
} voipqos_seen SEC(".maps");

/* one packet that may be RTP or STUN, this direction (header_evidence._Direction) */
static __always_inline void seen_packet(struct seen_dir *d, int stun, __u32 ssrc, __u16 seq)
{
	__u32 i;

	if (stun) {
		d->stun++;
		return;
	}
#pragma unroll
	for (i = 0; i < 2; i++) {
		if ((d->used >> i) & 1 && d->ssrc[i] == ssrc) {
			__u16 gap = seq - d->seq[i];

			if (gap >= 1 && gap <= RTP_CHAIN_GAP)
				d->rtp++;
			d->seq[i] = seq;
			d->last = i;
			return;
		}
	}
	i = d->last ? 0 : 1;	/* a new SSRC takes the slot that was not used last */
	d->ssrc[i & 1] = ssrc;
	d->seq[i & 1] = seq;
	d->used |= 1 << i;
	d->last = i;
}

/* UDP only, not fragmented: TCP and every other protocol leave at the protocol check */
static __always_inline void observe(struct __sk_buff *skb, __u32 l3, __u16 proto)
{
	__u32 dir = skb->ingress_ifindex == skb->ifindex ? SEEN_IN : SEEN_OUT;
	struct seen_key key = {};
	struct seen_flow *flow;
	__u32 l4, len, ssrc = 0;
	__u8 buf[20], udp[8], b[12] = {};	/* b: the payload's first 12 (or 8) bytes */
	const __u8 *h;
	__u16 seq = 0;
	int stun;

	if (proto == ETH_P_IP) {
		h = peek(skb, l3, buf, 20);
		if (!h || h[9] != IPPROTO_UDP)
			return;
		if ((h[0] >> 4) != 4 || (h[0] & 0x0f) < 5 || ((h[6] & 0x3f) | h[7]))
			return;		/* not IPv4, or a fragment (MF set or an offset) */
		key.far_addr[2] = bpf_htonl(0x0000ffff);
		if (dir == SEEN_IN)
			__builtin_memcpy(&key.far_addr[3], &h[12], 4);
		else
			__builtin_memcpy(&key.far_addr[3], &h[16], 4);
		l4 = l3 + (h[0] & 0x0f) * 4;
	} else if (proto == ETH_P_IPV6) {
		__u8 next, frag;
		int off;

		h = peek(skb, l3, buf, 8);
		if (!h || (h[0] >> 4) != 6)
			return;
		next = h[6];
		off = ipv6_upper(skb, l3 + 40, &next, &frag);
		if (next != IPPROTO_UDP || off < 0 || frag)
			return;
		if (load(skb, l3 + (dir == SEEN_IN ? 8 : 24), key.far_addr, 16))
			return;
		l4 = off;
	} else {
		return;
	}
	if (load(skb, l4, udp, sizeof(udp)))
		return;
	if ((udp[0] == 0 && udp[1] == DNS_PORT) || (udp[2] == 0 && udp[3] == DNS_PORT))
		return;		/* DNS: random IDs look like RTP a quarter of the time */
	len = (__u32)udp[4] << 8 | udp[5];	/* UDP length: Ethernet padding is not payload */
	if (len > skb->len - l4)
		len = skb->len - l4;
	if (len < 8 + 8)
		return;
	if (len >= 8 + 12 ? load(skb, l4 + 8, b, 12) : load(skb, l4 + 8, b, 8))
		return;
	stun = (b[0] & 0xc0) == 0 && be32_at(b + 4) == STUN_COOKIE;
	if (!stun) {
		if (len < 8 + 12 || (b[0] >> 6) != 2 || ((b[1] & 0x7f) >= 72 && (b[1] & 0x7f) <= 76))
			return;		/* neither: not worth a map entry or a lookup */
		ssrc = be32_at(b + 8);
		seq = (__u16)b[2] << 8 | b[3];
	}
	if (dir == SEEN_IN) {
		__builtin_memcpy(&key.far_port, &udp[0], 2);
		__builtin_memcpy(&key.near_port, &udp[2], 2);
	} else {
		__builtin_memcpy(&key.far_port, &udp[2], 2);
		__builtin_memcpy(&key.near_port, &udp[0], 2);
	}
	flow = bpf_map_lookup_elem(&voipqos_seen, &key);
	if (!flow) {
		struct seen_flow fresh = {};

		bpf_map_update_elem(&voipqos_seen, &key, &fresh, BPF_NOEXIST);
		flow = bpf_map_lookup_elem(&voipqos_seen, &key);
		if (!flow)
			return;
	}
	seen_packet(&flow->dir[dir & 1], stun, ssrc, seq);
}

/* observe-only entries: never change the packet, always TC_ACT_UNSPEC */
SEC("tc_observe")
int voipqos_obs_eth(struct __sk_buff *skb)
{
	__u32 l3 = 0;
	__u16 type = eth_type(skb, &l3);

	if (type)
		observe(skb, l3, type);
	return TC_ACT_UNSPEC;
}

SEC("tc_observe_l3")
int voipqos_obs_l3(struct __sk_buff *skb)
{
	observe(skb, 0, bpf_ntohs(skb->protocol));
	return TC_ACT_UNSPEC;
}

char _license[] SEC("license") = "GPL";
