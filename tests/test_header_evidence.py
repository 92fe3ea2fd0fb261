"""The observer's reference model: what counts as RTP and STUN (header_evidence.py)."""

from voipqos.header_evidence import IN, OUT, FlowHeaders, HeaderCounts, worth_tracking


def rtp(seq: int, ssrc: int = 0x11223344, pt: int = 0, first: int = 0x80) -> bytes:
    return bytes([first, pt]) + seq.to_bytes(2, "big") + b"\0\0\0\0" + ssrc.to_bytes(4, "big")


STUN = bytes.fromhex("000100082112a442") + b"\1" * 12


def test_a_stream_chains_from_its_second_packet():
    f = FlowHeaders()
    for s in (65534, 65535, 0, 1):  # across the wrap
        f.packet(OUT, rtp(s))
    assert f.counts() == HeaderCounts(rtp_out=3)


def test_thinned_stream_still_chains_but_a_jump_does_not():
    f = FlowHeaders()
    for s in (10, 40, 104, 300, 301):  # +30, +64 chain; +196 restarts; +1 chains
        f.packet(IN, rtp(s))
    assert f.counts().rtp_in == 3


def test_two_bundled_streams_both_count():
    f = FlowHeaders()
    for i in range(5):
        f.packet(OUT, rtp(100 + i, ssrc=1, first=0x90))
        f.packet(OUT, rtp(7000 + i, ssrc=2, pt=111))
    assert f.counts().rtp_out == 8


def test_rtcp_stun_and_other_protocols():
    f = FlowHeaders()
    rtcp = bytes([0x81, 200]) + b"\0" * 10
    quic = bytes([0x45]) + b"\0" * 11
    for head in (rtcp, rtcp, quic, STUN, STUN[:7]):
        f.packet(IN, head)
    assert f.counts() == HeaderCounts(stun_in=1)
    assert worth_tracking(STUN) and worth_tracking(rtp(1))
    assert not worth_tracking(quic) and not worth_tracking(rtcp) and not worth_tracking(b"\x80")


def test_deltas_wrap_like_the_kernel_counters():
    assert HeaderCounts(rtp_out=3).since(HeaderCounts(rtp_out=2**32 - 2)) == HeaderCounts(rtp_out=5)
    assert HeaderCounts(1, 2, 3, 4).since(None) == HeaderCounts(1, 2, 3, 4)
