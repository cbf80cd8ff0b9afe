"""tt.save / tt.load: round trips, atomic writes, and clear errors for every kind of bad file."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import torch
from hypothesis import given
from hypothesis import strategies as st

import tensortrain as tt
import tensortrain.files as tfiles
import tensortrain.io_format as tformat
from strategies import matrix_specs, random_tt, seeds, tensor_specs


def _same(a, b) -> None:
    assert type(a) is type(b)
    assert a.raw_shape == b.raw_shape and a.tt_ranks == b.tt_ranks and a.dtype == b.dtype
    for x, y in zip(a.tt_cores, b.tt_cores, strict=True):
        assert torch.equal(x, y)  # bit-exact: a file round trip must not change a single value


def _tt(gen, *, batch_size=None, dtype=torch.float64, matrix=False):
    raw = ((2, 3), (4, 2)) if matrix else (3, 4, 2)
    ranks = (1, 3, 1) if matrix else (1, 2, 3, 1)
    return random_tt(raw, ranks, gen=gen, dtype=dtype, batch_size=batch_size)


# --------------------------------------------------------------------------------------- round trips
@given(
    spec=st.one_of(tensor_specs(), matrix_specs()),
    batch_size=st.sampled_from([None, 1, 3]),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.float16, torch.bfloat16]),
    seed=seeds,
)
def test_round_trip(tmp_path, spec, batch_size, dtype, seed):
    raw, ranks = spec
    a = random_tt(raw, ranks, gen=torch.Generator().manual_seed(seed), batch_size=batch_size).to(dtype)
    path = tmp_path / "a.safetensors"
    tt.save(a, path)
    _same(a, tt.load(path))


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_round_trip_complex(tmp_path, gen, dtype, batch_size):
    # safetensors has no complex128: cores travel as view_as_real and come back complex.
    a = _tt(gen, batch_size=batch_size, matrix=True)
    a = a.to(dtype)
    a = type(a)([c * (1 + 2j) for c in a.tt_cores])
    tt.save(a, str(tmp_path / "c.safetensors"))
    _same(a, tt.load(tmp_path / "c.safetensors"))
    conj = type(a)([c.conj() for c in a.tt_cores])  # lazily conjugated views (the conj bit): saved resolved
    assert conj.tt_cores[0].is_conj()
    tt.save(conj, tmp_path / "conj.safetensors")
    back = tt.load(tmp_path / "conj.safetensors")
    assert not back.tt_cores[0].is_conj()
    _same(conj, back)


def test_views_parameters_and_grad_cores_are_saved(tmp_path, gen):
    batch = _tt(gen, batch_size=5)
    # a slice of a batch: cores are views that share storage, which safetensors refuses unless copied
    part = batch[1:4]
    tt.save(part, tmp_path / "part.safetensors")
    _same(part, tt.load(tmp_path / "part.safetensors"))
    # non-contiguous cores (a transposed view) and Parameters that require grad
    cores = [torch.nn.Parameter(c.transpose(0, 2).contiguous().transpose(0, 2)) for c in _tt(gen).tt_cores]
    assert not cores[1].is_contiguous()
    a = tt.TensorTrain(cores)
    tt.save(a, tmp_path / "p.safetensors")
    b = tt.load(tmp_path / "p.safetensors")
    assert not b.requires_grad
    _same(a.detach(), b)


def test_load_to_device(tmp_path, gen):
    a = _tt(gen, matrix=True)
    tt.save(a, tmp_path / "a.safetensors")
    b = tt.load(tmp_path / "a.safetensors", device="meta")
    assert b.device.type == "meta" and b.raw_shape == a.raw_shape and b.tt_ranks == a.tt_ranks
    assert tt.load(tmp_path / "a.safetensors", device=torch.device("cpu")).device.type == "cpu"


def test_load_refuses_a_dtype_for_the_device(tmp_path, gen):
    """tt.load(path, torch.float16) cast the cores silently: the second argument is the device."""
    tt.save(_tt(gen), tmp_path / "a.safetensors")
    with pytest.raises(TypeError, match=r"device must be a torch.device .*torch.float16.*tt.cast"):
        tt.load(tmp_path / "a.safetensors", torch.float16)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="gpu"):  # a misspelled device: torch's own message, no cast hint
        tt.load(tmp_path / "a.safetensors", "gpu")


def test_metadata_round_trip_and_interop(tmp_path, gen):
    a = _tt(gen, matrix=True)
    path = tmp_path / "a.safetensors"
    tt.save(a, path, metadata={"description": "layer 3", "source": "model.pt"})
    assert tt.read_metadata(path) == {"description": "layer 3", "source": "model.pt"}
    tt.save(a, path)
    assert tt.read_metadata(path) == {}
    # any safetensors reader gets the cores
    plain = safetensors.torch.load_file(path)
    assert sorted(plain) == ["core_0", "core_1"]
    assert torch.equal(plain["core_1"], a.tt_cores[1])


def test_overwrite_keeps_permissions_like_open(tmp_path, gen):
    path = tmp_path / "a.safetensors"
    tt.save(_tt(gen), path)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    b = _tt(gen, batch_size=2)
    tt.save(b, path)
    _same(b, tt.load(path))
    assert os.listdir(tmp_path) == ["a.safetensors"]


# ----------------------------------------------------------------------------------- save validation
def test_save_rejects_non_tt(tmp_path):
    with pytest.raises(TypeError, match="TensorTrain or TensorTrainBatch, got Linear"):
        tt.save(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
    with pytest.raises(TypeError, match="got Tensor"):
        tt.save(torch.ones(3), tmp_path / "x.safetensors")
    assert not list(tmp_path.iterdir())


def test_a_path_that_is_not_a_file_name_is_named(tmp_path):
    """A file object or bytes got pathlib's own TypeError, naming neither the function nor the argument."""
    a = tt.random_tensor((2, 3), tt_rank=2)
    tt.save(a, tmp_path / "a.safetensors")
    for bad in (io.BytesIO(), os.fsencode(tmp_path / "b.safetensors"), 5):
        with pytest.raises(TypeError, match=rf"tt.save: path must be a file name .*got {type(bad).__name__}"):
            tt.save(a, bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=rf"tt.load: path must be a file name .*got {type(bad).__name__}"):
            tt.load(bad)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"tt.read_metadata: path must be a file name"):
            tt.read_metadata(bad)  # type: ignore[arg-type]
    assert [p.name for p in tmp_path.iterdir()] == ["a.safetensors"]


def test_save_rejects_bad_metadata(tmp_path, gen):
    a = _tt(gen)
    with pytest.raises(ValueError, match="'tensortrain' is reserved"):
        tt.save(a, tmp_path / "x.safetensors", metadata={"tensortrain": "{}"})
    with pytest.raises(TypeError, match="must map str to str, got 'n': int"):
        tt.save(a, tmp_path / "x.safetensors", metadata={"n": 3})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="mapping of str to str, got list"):
        tt.save(a, tmp_path / "x.safetensors", metadata=["a"])  # type: ignore[arg-type]
    # a file name that is not UTF-8, as os.fsdecode gives it (lone surrogates): the header is UTF-8 JSON, and the
    # codec's own message named neither the metadata nor the entry
    odd = os.fsdecode(b"model-\xff.pt")
    with pytest.raises(ValueError, match=r"metadata entry 'source': .* not encodable as UTF-8.*'\\udcff'"):
        tt.save(a, tmp_path / "x.safetensors", metadata={"source": odd})
    with pytest.raises(ValueError, match=r"metadata key 'model-\\udcff.pt' is not encodable as UTF-8"):
        tt.save(a, tmp_path / "x.safetensors", metadata={odd: "source"})
    assert not list(tmp_path.iterdir())


def test_save_rejects_unstorable_cores(tmp_path, gen):
    a = _tt(gen)
    with pytest.raises(TypeError, match=r"dtype torch.float8_e4m3fn"):  # (no TT object holds float8 cores)
        tt.TensorTrain([c.to(torch.float8_e4m3fn) for c in a.tt_cores])
    with pytest.raises(ValueError, match="meta device"):
        tt.save(a.to("meta"), tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match=r"the folder .*such does not exist"):
        tt.save(a, tmp_path / "no" / "such" / "folder.safetensors")
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name"):
        tt.save(a, tmp_path / "sub")
    assert [p.name for p in tmp_path.iterdir()] == ["sub"] and not list((tmp_path / "sub").iterdir())


# ------------------------------------------------------------------------------------- atomic writes
def _good_file(tmp_path, gen):
    old = _tt(gen, matrix=True)
    path = tmp_path / "w.safetensors"
    tt.save(old, path)
    return old, path


def test_failure_mid_write_keeps_old_file(tmp_path, gen, monkeypatch):
    old, path = _good_file(tmp_path, gen)

    def half_then_fail(fd, data):
        os.write(fd, data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tfiles, "_write_all", half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        tt.save(_tt(gen, batch_size=4), path)
    _same(old, tt.load(path))
    assert os.listdir(tmp_path) == [path.name]  # the temporary file is gone too


@pytest.mark.parametrize("stage", ["fsync", "replace"])
def test_failure_after_write_keeps_old_file(tmp_path, gen, monkeypatch, stage):
    old, path = _good_file(tmp_path, gen)

    def fail(*args, **kwargs):
        raise OSError(5, f"simulated {stage} failure")

    monkeypatch.setattr(tfiles.os, stage, fail)
    with pytest.raises(OSError, match=f"simulated {stage}"):
        tt.save(_tt(gen), path)
    monkeypatch.undo()
    _same(old, tt.load(path))
    assert os.listdir(tmp_path) == [path.name]


def test_interrupt_mid_write_keeps_old_file(tmp_path, gen, monkeypatch):
    old, path = _good_file(tmp_path, gen)

    def interrupted(fd, data):
        os.write(fd, data[:10])
        raise KeyboardInterrupt

    monkeypatch.setattr(tfiles, "_write_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tt.save(_tt(gen), path)
    _same(old, tt.load(path))
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.parametrize("length", [200, 238, 255])
def test_long_file_names_save(tmp_path, gen, length):
    """Any name the file system allows: the temporary name must not be the target's name plus a suffix."""
    a = _tt(gen)
    path = tmp_path / ("a" * (length - len(".safetensors")) + ".safetensors")
    tt.save(a, path)
    tt.save(_tt(gen, batch_size=2), path)  # and over an existing file
    assert os.listdir(tmp_path) == [path.name]
    assert tt.load(path).batch_size == 2


@pytest.mark.skipif(os.name != "posix", reason="symbolic links and modes as on POSIX")
def test_save_writes_through_links_and_keeps_the_mode(tmp_path, gen):
    """As a write into the file would: a link to a checkpoint updates the checkpoint (and stays a link), and a
    file restricted to its owner is not widened by the replace."""
    (tmp_path / "run3").mkdir()
    real = tmp_path / "run3" / "w.safetensors"
    tt.save(_tt(gen), real)
    link = tmp_path / "latest.safetensors"
    link.symlink_to(Path("run3") / "w.safetensors")
    b = _tt(gen, batch_size=2)
    tt.save(b, link)
    assert link.is_symlink() and tt.load(real).batch_size == 2
    assert sorted(os.listdir(tmp_path / "run3")) == ["w.safetensors"]  # no temporary file left beside it
    os.chmod(real, 0o600)
    tt.save(_tt(gen), real)
    assert os.stat(real).st_mode & 0o777 == 0o600


def test_temporary_name_is_short_and_hidden(tmp_path, gen, monkeypatch):
    created = []
    real_replace = os.replace

    def spy(src, dst):
        created.append(Path(src))
        real_replace(src, dst)

    monkeypatch.setattr(tfiles.os, "replace", spy)
    tt.save(_tt(gen), tmp_path / ("b" * 250))
    assert len(created) == 1 and created[0].parent == tmp_path
    assert re.fullmatch(r"\.tt-[0-9a-f]{12}\.tmp", created[0].name)


@pytest.mark.skipif(os.name != "posix", reason="symbolic links")
def test_a_link_planted_at_the_temporary_name_is_not_written_through(tmp_path, gen, monkeypatch):
    """The temporary file is created exclusively: a link (or another writer's file) already at its name makes
    the save fail, instead of the bytes going into whatever the link points to."""
    old, path = _good_file(tmp_path, gen)
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    monkeypatch.setattr(tfiles.secrets, "token_hex", lambda n: "0123456789ab")
    (tmp_path / ".tt-0123456789ab.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError) as info:
        tt.save(_tt(gen), path)
    assert info.value.filename == str(path)
    assert victim.read_bytes() == b"keep"
    _same(old, tt.load(path))


@pytest.mark.parametrize("sep", [os.sep, "/"])
def test_a_path_ending_with_a_separator_is_a_folder(tmp_path, gen, sep):
    """Path() drops a trailing separator: "ckpt/" wrote a file named ckpt (and overwrote x.safetensors for
    "x.safetensors/"), where open() raises IsADirectoryError."""
    with pytest.raises(IsADirectoryError, match="is a folder; give a file name"):
        tt.save(_tt(gen), str(tmp_path / "ckpt") + sep)
    old, path = _good_file(tmp_path, gen)
    with pytest.raises(IsADirectoryError):
        tt.save(_tt(gen, matrix=True), str(path) + sep)
    _same(old, tt.load(path))
    assert sorted(os.listdir(tmp_path)) == [path.name]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_written_into_not_replaced(tmp_path, gen):
    """The rename of the atomic write replaced a FIFO (or a device such as /dev/null) with a regular file."""
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    a = _tt(gen, matrix=True)
    tt.save(a, fifo)
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(received[0])
    _same(a, tt.load(copy))


def test_unwritable_folder_names_the_target(tmp_path, gen, monkeypatch):
    """The error names the file the caller asked for, not the hidden temporary file."""
    old, path = _good_file(tmp_path, gen)
    real_open = os.open

    def refuse(name, flags, *args, **kwargs):  # a read-only folder (chmod does not stop root)
        if flags & os.O_CREAT:
            raise PermissionError(13, "Permission denied", os.fsdecode(name))
        return real_open(name, flags, *args, **kwargs)

    monkeypatch.setattr(tfiles.os, "open", refuse)
    with pytest.raises(PermissionError) as info:
        tt.save(_tt(gen), path)
    monkeypatch.undo()
    assert info.value.filename == str(path) and info.value.errno == 13
    assert str(path) in str(info.value) and ".tmp" not in str(info.value)
    _same(old, tt.load(path))
    assert os.listdir(tmp_path) == [path.name]


@pytest.mark.skipif(
    shutil.which("setpriv") is None or os.name != "posix", reason="needs setpriv (util-linux)"
)
def test_a_write_protected_file_is_refused_as_open_refuses_it(tmp_path):
    """The rename over the file needs only the folder's permission: tt.save replaced a 0o444 checkpoint that
    open() refuses to write. Run without the capability that lets root write anyway (as root, both write)."""
    script = (
        "import os, sys, tensortrain as tt\n"
        "p = sys.argv[1]\n"
        "tt.save(tt.random_tensor((2, 3), 2), p); os.chmod(p, 0o444); before = open(p, 'rb').read()\n"
        "for name, write in (('open', lambda: open(p, 'ab').close()),\n"
        "                    ('save', lambda: tt.save(tt.random_tensor((2, 3), 2), p))):\n"
        "    try:\n"
        "        write(); print(name, 'wrote')\n"
        "    except PermissionError as e:\n"
        "        print(name, 'refused', e.filename == p)\n"
        "print('kept', open(p, 'rb').read() == before, sorted(os.listdir(os.path.dirname(p))))\n"
    )
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else []
    cmd = [*drop, sys.executable, "-c", script]
    out = subprocess.run([*cmd, str(tmp_path / "w.safetensors")], capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[:3] == [
        "open refused True",
        "save refused True",
        "kept True ['w.safetensors']",
    ]


def test_a_file_in_place_of_the_folder_is_not_a_directory(tmp_path, gen):
    (tmp_path / "f").write_text("not a folder")
    with pytest.raises(NotADirectoryError, match=r"tt.save: .*f is not a folder"):
        tt.save(_tt(gen), tmp_path / "f" / "x.safetensors")
    with pytest.raises(NotADirectoryError, match=r"tt.save: .*f is not a folder"):  # deeper too
        tt.save(_tt(gen), tmp_path / "f" / "sub" / "x.safetensors")
    if os.path.exists("/dev/null"):  # not a regular file either
        with pytest.raises(NotADirectoryError, match=r"tt.save: /dev/null is not a folder"):
            tt.save(_tt(gen), "/dev/null/sub/x.safetensors")


# ------------------------------------------------------------------------------------------ bad files
def _names_file(path: Path) -> str:
    return re.escape(str(path))


def _raises_naming(path: Path, match: str):
    return pytest.raises(tt.TTFileError, match=_names_file(path) + ".*" + match)


@given(cut=st.floats(0.0, 0.999))
def test_truncated_files(tmp_path_factory, cut):
    tmp = tmp_path_factory.mktemp("trunc")
    a = random_tt((3, 4, 2), (1, 2, 2, 1), gen=torch.Generator().manual_seed(0))
    path = tmp / "a.safetensors"
    tt.save(a, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(cut * len(data))])
    with _raises_naming(path, "truncated|too short|not a safetensors"):
        tt.load(path)
    assert issubclass(tt.TTFileError, ValueError)


def test_random_and_empty_files(tmp_path, gen):
    path = tmp_path / "r.safetensors"
    path.write_bytes(b"")
    with _raises_naming(path, "too short"):
        tt.load(path)
    path.write_bytes(torch.randint(0, 256, (1000,), generator=gen, dtype=torch.uint8).numpy().tobytes())
    with _raises_naming(path, "not a safetensors file"):
        tt.load(path)
    # a small length prefix followed by garbage: a header that is not JSON
    path.write_bytes(struct.pack("<Q", 4) + b"\xff\xfe{x" + b"\0" * 20)
    with _raises_naming(path, "header is not JSON"):
        tt.load(path)
    with _raises_naming(path, "header is not JSON"):
        tt.read_metadata(path)
    path.write_bytes(struct.pack("<Q", 2) + b"[]")
    with _raises_naming(path, "not a JSON object"):
        tt.load(path)


def test_someone_elses_safetensors_file(tmp_path):
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file({"weight": torch.ones(2, 3), "bias": torch.zeros(2)}, path)
    with _raises_naming(path, r"not one written by tt.save.*\['bias', 'weight'\]"):
        tt.load(path)
    with _raises_naming(path, "not one written by tt.save"):
        tt.read_metadata(path)
    safetensors.torch.save_file({"weight": torch.ones(2)}, path, metadata={"format": "pt"})
    with _raises_naming(path, "not one written by tt.save"):
        tt.load(path)


def _rewrite(path: Path, tensors=None, info_update=None, info_raw=None) -> None:
    """Rewrite a tt.save file with changed tensors and/or header structure."""
    stored = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    info = json.loads(meta["tensortrain"])
    info.update(info_update or {})
    meta["tensortrain"] = info_raw if info_raw is not None else json.dumps(info)
    safetensors.torch.save_file(stored if tensors is None else tensors(stored), path, metadata=meta)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (dict(tensors=lambda s: {"core_0": s["core_0"]}), r"expected tensors \['core_0', 'core_1'\]"),
        (dict(tensors=lambda s: {**s, "extra": torch.ones(1)}), r"found \['core_0', 'core_1', 'extra'\]"),
        (dict(tensors=lambda s: {**s, "core_1": s["core_1"][:, :1].contiguous()}), "core_1 has shape"),
        (dict(tensors=lambda s: {k: v.float() for k, v in s.items()}), "dtype torch.float32"),
        (dict(info_raw="{not json"), "not valid JSON"),
        (dict(info_raw="[1, 2]"), "not a JSON object"),
        (dict(info_update={"format_version": 99}), "format version 99.*upgrade tensortrain"),
        (dict(info_update={"format_version": "1"}), "invalid format_version"),
        (dict(info_update={"kind": "cube"}), "'kind' is 'cube'"),
        (dict(info_update={"kind": None}), "'kind' is missing"),
        (dict(info_update={"dtype": "int64"}), "unknown dtype 'int64'"),
        (dict(info_update={"dtype": "no_such_dtype"}), "unknown dtype"),
        (dict(info_update={"tt_ranks": [1, 0, 1]}), "invalid TT-ranks"),
        (dict(info_update={"tt_ranks": [1, 3]}), "invalid TT-ranks"),
        (dict(info_update={"raw_shape": [[2, 3], [4]]}), "invalid raw_shape"),
        (dict(info_update={"raw_shape": [2, 3]}), "invalid raw_shape"),
        (dict(info_update={"raw_shape": [[2, 3], [4, 2], [5, 5]]}), "invalid raw_shape"),  # a third group
        (dict(info_update={"batch": True, "batch_size": 0}), "batch without a valid batch_size"),
        (dict(info_update={"batch": True, "batch_size": True}), "batch without a valid batch_size"),
        (dict(info_update={"d": True}), "'d' is missing or not a positive int"),
        (dict(info_update={"d": 0}), "'d' is missing or not a positive int"),
        (dict(info_update={"tt_ranks": [1, True, 1]}), "invalid TT-ranks"),
        (dict(info_update={"batch": True, "batch_size": 2}), "core_0 has shape"),
        (dict(info_update={"kind": "tensor", "raw_shape": [8, 6]}), "core_0 has shape"),
    ],
)
def test_inconsistent_files(tmp_path, gen, change, match):
    path = tmp_path / "m.safetensors"
    tt.save(_tt(gen, matrix=True), path)
    _rewrite(path, **change)
    with _raises_naming(path, match):
        tt.load(path)
    with _raises_naming(path, match):  # read_metadata checks the tensor table too, without reading the data
        tt.read_metadata(path)


def test_cores_that_do_not_chain(tmp_path, gen):
    # header and tensors agree with each other but not with the TT rules: the constructor's message,
    # wrapped so that it names the file
    path = tmp_path / "m.safetensors"
    tt.save(_tt(gen), path)
    bad = {
        "core_0": torch.ones(2, 3, 2, dtype=torch.float64),
        "core_1": torch.ones(2, 4, 1, dtype=torch.float64),
    }
    _rewrite(path, tensors=lambda s: bad, info_update={"d": 2, "raw_shape": [3, 4], "tt_ranks": [2, 2, 1]})
    with _raises_naming(path, "boundary TT-ranks must be 1"):
        tt.load(path)
    # read_metadata refuses what load refuses (it returned {} here)
    with _raises_naming(path, "boundary TT-ranks must be 1"):
        tt.read_metadata(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h["core_1"]["data_offsets"].__setitem__(0, h["core_1"]["data_offsets"][0] + 8),
         r"data_offsets leave a gap at entry 'core_1' \(it starts at byte \d+, the entries before it end at \d+\)"),
        (lambda h: h["core_1"]["data_offsets"].__setitem__(0, h["core_1"]["data_offsets"][0] - 8),
         r"data_offsets overlap at entry 'core_1'"),
        (lambda h: h["core_1"].__setitem__("data_offsets", "0-8"),
         r"entry 'core_1' has no valid data_offsets \(two byte offsets, start <= end\): '0-8'"),
        (lambda h: h.__setitem__("core_1", 7), r"entry 'core_1' has no valid data_offsets"),
        (lambda h: h["core_1"].__setitem__("data_offsets", [float(o) for o in h["core_1"]["data_offsets"]]),
         r"entry 'core_1' has no valid data_offsets"),
        (lambda h: h["core_1"]["data_offsets"].reverse(), r"entry 'core_1' has no valid data_offsets"),
    ],
)  # fmt: skip
def test_corrupted_tensor_table(tmp_path, gen, edit, message):
    """Offsets that leave gaps, overlap or are not offsets: named as such (they were called bytes appended to the
    file, or left to safetensors' own message), with the file's name."""
    path = tmp_path / "m.safetensors"
    tt.save(_tt(gen), path)
    data = bytearray(path.read_bytes())
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    edit(header)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (size - len(text))
    assert len(text) == size
    path.write_bytes(bytes(data[:8]) + text + bytes(data[8 + size :]))
    for read in (tt.load, tt.read_metadata):
        with _raises_naming(path, message):
            read(path)


def test_read_metadata_refuses_what_load_refuses(tmp_path, gen):
    """A metadata value that is not a string (safetensors refuses the file) made read_metadata return it."""
    path = tmp_path / "m.safetensors"
    tt.save(_tt(gen), path, metadata={"note": "x"})
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + size])
    header["__metadata__"]["note"] = 5
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + size :])
    for read in (tt.load, tt.read_metadata):
        with _raises_naming(path, "not a valid safetensors file"):
            read(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        tt.load(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError):
        tt.read_metadata(tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------- models with TT layers
class TTNet(torch.nn.Module):
    """TTEmbedding -> mean over the sequence -> TTLinear -> tanh -> TTLinear."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.emb = tt.nn.TTEmbedding(20, 8, tt_rank=3, voc_dims=(4, 5), emb_dims=(2, 4), dtype=torch.float64)
        self.fc1 = tt.nn.TTLinear(8, 12, tt_rank=3, in_dims=(2, 4), out_dims=(3, 4), dtype=torch.float64)
        self.fc2 = tt.nn.TTLinear(12, 5, tt_rank=2, in_dims=(3, 4), out_dims=(5, 1), dtype=torch.float64)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(self.emb(idx).mean(dim=-2))))


IDX = torch.tensor([[0, 7, 19], [3, 3, 12]])


def _round_fc1(model: TTNet) -> None:
    # change ranks after construction (as compression does), so loading must resize the cores
    model.fc1.load_tt_(tt.round(model.fc1.weight.detach(), max_tt_rank=1))


@pytest.mark.parametrize("rank_change", [False, True])
def test_state_dict_round_trip_through_torch_save(tmp_path, rank_change):
    model = TTNet(seed=0)
    if rank_change:
        _round_fc1(model)
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    fresh = TTNet(seed=1)
    assert not torch.equal(fresh(IDX), model(IDX))
    fresh.load_state_dict(torch.load(path, weights_only=True))
    assert fresh.fc1.tt_ranks == model.fc1.tt_ranks == ((1, 1, 1) if rank_change else (1, 3, 1))
    assert torch.equal(fresh(IDX), model(IDX))
    for (k1, v1), (k2, v2) in zip(fresh.state_dict().items(), model.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)


def test_state_dict_round_trip_through_safetensors(tmp_path):
    model = TTNet(seed=0)
    _round_fc1(model)
    path = tmp_path / "model.safetensors"
    safetensors.torch.save_file(model.state_dict(), path)
    fresh = TTNet(seed=1)
    fresh.load_state_dict(safetensors.torch.load_file(path))
    assert torch.equal(fresh(IDX), model(IDX))


def test_tt_objects_through_torch_save_weights_only(tmp_path, gen):
    # weights_only=True refuses unknown classes; allow-listing TensorTrain loads it (tt.save needs no such step)
    a = _tt(gen, matrix=True)
    path = tmp_path / "a.pt"
    torch.save({"w": a, "b": _tt(gen, batch_size=2)}, path)
    with pytest.raises(pickle.UnpicklingError, match="TensorTrain"):
        torch.load(path, weights_only=True)
    with torch.serialization.safe_globals([tt.TensorTrain, tt.TensorTrainBatch]):
        loaded = torch.load(path, weights_only=True)
    _same(a, loaded["w"])
    assert isinstance(loaded["b"], tt.TensorTrainBatch) and loaded["b"].batch_size == 2


def test_read_metadata_refuses_a_truncated_file(tmp_path, gen):
    """It reads only the header, but a file shorter than the header declares is truncated all the same."""
    path = tmp_path / "w.safetensors"
    tt.save(_tt(gen, matrix=True), path, metadata={"note": "fc1"})
    raw = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[: len(raw) - 8])
    with pytest.raises(tt.TTFileError, match="truncated"):
        tt.read_metadata(cut)
    assert tt.read_metadata(path) == {"note": "fc1"}


def test_a_file_one_byte_short_is_truncated(tmp_path, gen):
    """The data-size check is exact: a file missing only its last byte is named truncated by load and by
    read_metadata (which does not read the data), not accepted or left to safetensors' own message."""
    path = tmp_path / "w.safetensors"
    tt.save(_tt(gen, matrix=True), path)
    raw = path.read_bytes()
    needed = len(raw) - 8 - struct.unpack("<Q", raw[:8])[0]
    path.write_bytes(raw[:-1])
    for read in (tt.load, tt.read_metadata):
        with _raises_naming(
            path, rf"truncated: the header describes {needed} data bytes, the file has {needed - 1}"
        ):
            read(path)


def test_read_metadata_and_load_refuse_bytes_after_the_data(tmp_path, gen):
    """read_metadata returned the metadata of a file that load refused (3 bytes appended)."""
    path = tmp_path / "w.safetensors"
    tt.save(_tt(gen, matrix=True), path, metadata={"note": "fc1"})
    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(path.read_bytes() + b"abc")
    for read in (tt.read_metadata, tt.load):
        with pytest.raises(tt.TTFileError, match="3 bytes follow the .* data bytes the header describes"):
            read(longer)


def _rewrite_info(path: Path, **update) -> None:
    stored = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, framework="pt") as f:
        meta = dict(f.metadata())
    info = json.loads(meta["tensortrain"])
    info.update(update)
    meta["tensortrain"] = json.dumps(info)
    safetensors.torch.save_file(stored, path, metadata=meta)


def test_io_next_format_version_is_refused(tmp_path, gen):
    # (test_io.py) the boundary: version FORMAT_VERSION + 1 is already newer than this reader
    path = tmp_path / "a.safetensors"
    tt.save(random_tt((3, 4), (1, 2, 1), gen=gen), path)
    _rewrite_info(path, format_version=tformat.FORMAT_VERSION + 1)
    with pytest.raises(tt.TTFileError, match=f"format version {tformat.FORMAT_VERSION + 1}.*upgrade"):
        tt.load(path)
    with pytest.raises(tt.TTFileError, match="upgrade"):
        tt.read_metadata(path)


def test_io_too_many_tt_ranks_are_refused(tmp_path, gen):
    # (test_io.py, beside test_inconsistent_files) d + 2 ranks for d cores: the header is corrupt
    path = tmp_path / "a.safetensors"
    tt.save(random_tt((3, 4), (1, 2, 1), gen=gen), path)
    _rewrite_info(path, tt_ranks=[1, 2, 1, 1])
    with pytest.raises(tt.TTFileError, match="invalid TT-ranks"):
        tt.load(path)
    with pytest.raises(tt.TTFileError, match="invalid TT-ranks"):
        tt.read_metadata(path)


def test_io_save_syncs_the_folder_after_the_rename(tmp_path, gen, monkeypatch):
    # (test_io.py) the rename is made durable: the folder itself is fsync'ed after os.replace
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        return real_fsync(fd)

    def replace(a, b):
        events.append("replace")
        return real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    tt.save(random_tt((3, 4), (1, 2, 1), gen=gen), tmp_path / "a.safetensors")
    assert events == ["fsync-file", "replace", "fsync-dir"]


def test_metadata_over_the_safetensors_header_limit(tmp_path, gen):
    """safetensors' own SafetensorError (an Exception, not a ValueError) escaped tt.save."""
    path = tmp_path / "m.safetensors"
    with pytest.raises(ValueError, match="tt.save: safetensors cannot write this file"):
        tt.save(_tt(gen), path, metadata={"note": "x" * 100_000_001})
    assert not path.exists()


# ------------------------------------------------------------- from a mutation audit of persistence (session 28)
def _rewritten(path: Path, cores: dict[str, torch.Tensor], **header: object) -> None:
    """Rewrite a saved file with other cores and header fields (what a corrupt or hand-made file holds)."""
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    info = json.loads(meta["tensortrain"])
    info.update(header)
    meta["tensortrain"] = json.dumps(info)
    safetensors.torch.save_file(cores, str(path), metadata=meta)


def test_headers_with_a_bad_last_rank_or_mode_are_refused_by_load_and_read_metadata(tmp_path):
    path = tmp_path / "m.safetensors"
    d64 = torch.float64
    tt.save(tt.random_tensor((3, 4), tt_rank=2, dtype=d64), path, metadata={"note": "x"})
    _rewritten(
        path,
        {"core_0": torch.ones(1, 3, 2, dtype=d64), "core_1": torch.ones(2, 4, 3, dtype=d64)},
        tt_ranks=[1, 2, 3],
    )
    for fn in (tt.load, tt.read_metadata):
        with pytest.raises(tt.TTFileError, match="boundary TT-ranks must be 1"):
            fn(path)
    for mode in (0, True):  # (JSON true equals 1 in a shape comparison)
        tt.save(tt.random_tensor((3, 4), tt_rank=2, dtype=d64), path)
        cores = {"core_0": torch.ones(1, int(mode), 2, dtype=d64), "core_1": torch.ones(2, 4, 1, dtype=d64)}
        _rewritten(path, cores, raw_shape=[mode, 4])
        for fn in (tt.load, tt.read_metadata):
            with pytest.raises(tt.TTFileError, match="invalid raw_shape"):
                fn(path)
    tt.save(tt.random_tensor((3, 4), tt_rank=2), path)
    with pytest.raises(TypeError, match="got bool True"):
        tt.load(path, device=True)


def test_cores_sharing_memory_and_short_writes_round_trip(tmp_path, monkeypatch):
    path = tmp_path / "a.safetensors"
    c = torch.randn(2, 3, 2, dtype=torch.float64)
    shared = tt.TensorTrain(
        [torch.randn(1, 3, 2, dtype=torch.float64), c, c, torch.randn(2, 3, 1, dtype=torch.float64)]
    )
    tt.save(shared, path)  # (safetensors refuses tensors sharing memory: each core is copied)
    assert torch.equal(tt.full(tt.load(path)), tt.full(shared))
    real = os.write
    # POSIX allows short writes
    monkeypatch.setattr(tfiles.os, "write", lambda fd, data: real(fd, bytes(data[:64])))
    a = tt.random_tensor((3, 4, 5), tt_rank=2, dtype=torch.float64)
    tt.save(a, path)
    monkeypatch.undo()
    assert torch.equal(tt.full(tt.load(path)), tt.full(a))


def test_loading_other_ranks_keeps_the_parameters_of_cores_whose_shape_is_unchanged():
    kw = {"in_dims": (2, 2, 2), "out_dims": (2, 2, 2)}
    src = tt.nn.TTLinear(8, 8, tt_rank=(1, 2, 2, 1), **kw)
    dst = tt.nn.TTLinear(8, 8, tt_rank=(1, 2, 3, 1), **kw)
    before = list(dst.cores)
    dst.load_state_dict(src.state_dict())
    assert dst.tt_ranks == (1, 2, 2, 1) and dst.cores[0] is before[0]  # (an optimizer holding it stays valid)
    assert all(torch.equal(a, b) for a, b in zip(dst.cores, src.cores, strict=True))
