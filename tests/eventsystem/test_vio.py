"""VIO: a data holder that forwards reenable and continuation changes to its VConnection."""

from __future__ import annotations

import pytest

from ats_cffi.eventsystem.continuation import Continuation
from ats_cffi.eventsystem.iobuffer import MIOBuffer
from ats_cffi.eventsystem.mutex import ProxyMutex
from ats_cffi.eventsystem.vio import INT64_MAX, VIO, VIOOp


class RecordingVC:
    """Stands in for a VConnection: records the calls a VIO makes into it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object, object]] = []

    def reenable(self, vio: VIO) -> None:
        self.calls.append(("reenable", vio, None))

    def reenable_re(self, vio: VIO) -> None:
        self.calls.append(("reenable_re", vio, None))

    def set_continuation(self, vio: VIO, cont: object) -> None:
        self.calls.append(("set_continuation", vio, cont))


class MinimalVC:
    """A VConnection without a set_continuation hook."""

    def reenable(self, vio: VIO) -> None:
        pass


class Cont(Continuation):
    def __init__(self) -> None:
        super().__init__(ProxyMutex(), lambda event, data: None)


def test_op_values_match_ats() -> None:
    assert VIOOp.NONE == 0 and VIOOp.READ == 1 and VIOOp.WRITE == 2
    assert VIOOp.CLOSE == 3 and VIOOp.ABORT == 4
    assert VIOOp.SHUTDOWN_READ == 5 and VIOOp.SHUTDOWN_WRITE == 6
    assert VIOOp.SHUTDOWN_READWRITE == 7 and VIOOp.SEEK == 8
    assert VIOOp.PREAD == 9 and VIOOp.PWRITE == 10 and VIOOp.STAT == 11


def test_int64_max_means_until_end_of_stream() -> None:
    assert INT64_MAX == 2**63 - 1


def test_new_vio_is_idle() -> None:
    vio = VIO()
    assert vio.op == VIOOp.NONE
    assert (vio.nbytes, vio.ndone, vio.ntodo()) == (0, 0, 0)
    assert vio.cont is None and vio.mutex is None and vio.vc_server is None
    assert vio.get_writer() is None and vio.get_reader() is None


def test_ntodo_is_nbytes_minus_ndone() -> None:
    vio = VIO(VIOOp.READ)
    vio.nbytes = 100
    vio.ndone = 30
    assert vio.ntodo() == 70
    vio.nbytes = INT64_MAX
    assert vio.ntodo() == INT64_MAX - 30


def test_done_on_a_read_ends_the_operation_at_ndone() -> None:
    vio = VIO(VIOOp.READ)
    vio.set_writer(MIOBuffer(16))
    vio.nbytes = INT64_MAX
    vio.ndone = 42
    vio.done()
    assert vio.nbytes == 42
    assert vio.ntodo() == 0


def test_done_on_a_write_still_counts_the_bytes_waiting_in_its_reader() -> None:
    buf = MIOBuffer(16)
    reader = buf.alloc_reader()
    buf.write(b"0123456789")
    vio = VIO(VIOOp.WRITE)
    vio.set_reader(reader)
    vio.nbytes = INT64_MAX
    vio.ndone = 5
    vio.done()
    assert vio.nbytes == 15
    assert vio.ntodo() == 10


def test_read_vio_holds_the_writer_and_write_vio_holds_the_reader() -> None:
    buf = MIOBuffer(16)
    read_vio = VIO(VIOOp.READ)
    read_vio.set_writer(buf)
    assert read_vio.buffer is buf
    assert read_vio.get_writer() is buf
    assert read_vio.get_reader() is None

    reader = buf.alloc_reader()
    write_vio = VIO(VIOOp.WRITE)
    write_vio.set_reader(reader)
    assert write_vio.buffer is reader
    assert write_vio.get_reader() is reader
    assert write_vio.get_writer() is buf


def test_setting_a_buffer_of_the_wrong_kind_raises_type_error() -> None:
    buf = MIOBuffer(16)
    vio = VIO()
    with pytest.raises(TypeError, match="writer"):
        vio.set_writer(buf.alloc_reader())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="reader"):
        vio.set_reader(buf)  # type: ignore[arg-type]


def test_reenable_calls_into_the_vc_server_with_the_vio() -> None:
    vc = RecordingVC()
    vio = VIO(VIOOp.READ)
    vio.vc_server = vc
    vio.reenable()
    vio.reenable_re()
    assert vc.calls == [("reenable", vio, None), ("reenable_re", vio, None)]


def test_set_continuation_tells_the_vc_and_adopts_the_continuation_mutex() -> None:
    vc = RecordingVC()
    cont = Cont()
    vio = VIO(VIOOp.WRITE)
    vio.vc_server = vc
    vio.set_continuation(cont)
    assert vc.calls == [("set_continuation", vio, cont)]
    assert vio.cont is cont and vio.get_continuation() is cont
    assert vio.mutex is cont.mutex


def test_set_continuation_to_none_clears_continuation_and_mutex() -> None:
    vio = VIO(VIOOp.READ)
    vio.set_continuation(Cont())
    vio.set_continuation(None)
    assert vio.cont is None and vio.mutex is None


def test_set_continuation_works_with_a_vc_that_has_no_hook() -> None:
    cont = Cont()
    vio = VIO(VIOOp.READ)
    vio.vc_server = MinimalVC()
    vio.set_continuation(cont)
    assert vio.cont is cont and vio.mutex is cont.mutex


def test_vio_has_no_instance_dict() -> None:
    with pytest.raises(AttributeError):
        VIO().unexpected = 1  # type: ignore[attr-defined]
