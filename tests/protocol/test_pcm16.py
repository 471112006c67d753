import numpy as np

from protocol.pcm16 import Pcm16Assembler


def test_samples_split_across_messages_come_out_whole_and_in_order():
    samples = np.arange(-500, 500, 7, dtype="<i2")
    data = samples.tobytes()
    assembler = Pcm16Assembler()
    out, cuts = [], [0, 1, 2, 5, 6, 11, 100, 101, len(data)]
    for start, stop in zip(cuts, cuts[1:]):
        out.append(assembler.push(data[start:stop]))
    assert np.array_equal(np.concatenate(out), samples) and assembler.pending == 0


def test_an_odd_byte_waits_and_an_empty_message_gives_nothing():
    assembler = Pcm16Assembler()
    assert len(assembler.push(b"\x01")) == 0 and assembler.pending == 1
    assert len(assembler.push(b"")) == 0 and assembler.pending == 1
    assert assembler.push(b"\x02").tolist() == [0x0201] and assembler.pending == 0
