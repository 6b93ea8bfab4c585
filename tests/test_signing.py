"""Signing: a per-user key kept private outside the store, and rows sealed with an HMAC under it."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from nbbuild.store import signing
from nbbuild.store.signing import MAC_BYTES, Signer, key_path, user_key
from waiting import wait_until


@pytest.fixture
def config(tmp_path, monkeypatch):
    """A fresh XDG_CONFIG_HOME, with no key in it yet."""
    home = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home))
    return home


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "nbbuild" and r.levelno == logging.WARNING]


def test_the_key_lives_under_xdg_config_home_or_dot_config(config, monkeypatch, tmp_path):
    assert key_path() == str(config / "nbbuild" / "key")
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert key_path() == str(tmp_path / "home" / ".config" / "nbbuild" / "key")
    monkeypatch.setenv("XDG_CONFIG_HOME", "")          # empty counts as unset
    assert key_path() == str(tmp_path / "home" / ".config" / "nbbuild" / "key")


def test_the_key_is_made_once_private_and_then_read_back(config, caplog):
    assert not (config / "nbbuild" / "key").exists()
    key = user_key()
    path = config / "nbbuild" / "key"
    assert len(key) == 32 and path.read_bytes() == key
    assert path.stat().st_mode & 0o777 == 0o600
    assert (config / "nbbuild").stat().st_mode & 0o777 == 0o700
    assert user_key() == key                                   # the same key on the next call
    assert os.listdir(config / "nbbuild") == ["key"]           # no temporary file left behind
    assert _warnings(caplog) == []


def test_another_process_reads_the_same_key(config):
    key = user_key()
    out = subprocess.run([sys.executable, "-c", "from nbbuild.store.signing import user_key; print(user_key().hex())"],
                         check=True, capture_output=True, text=True).stdout.strip()
    assert out == key.hex()


def test_processes_creating_the_key_at_once_agree_on_one(tmp_path):
    # four processes, five fresh config directories: in each round all four make the key at once
    rounds = 5
    code = textwrap.dedent(f"""
        import os, sys
        from nbbuild.store.signing import user_key
        for r in range({rounds}):
            os.environ["XDG_CONFIG_HOME"] = os.path.join({str(tmp_path)!r}, f"config-{{r}}")
            open(os.path.join({str(tmp_path)!r}, f"ready-{{r}}-{{sys.argv[1]}}"), "w").close()
            while not os.path.exists(os.path.join({str(tmp_path)!r}, f"go-{{r}}")):
                pass
            print(user_key().hex(), flush=True)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, text=True)
             for i in range(4)]
    try:
        for r in range(rounds):
            wait_until(lambda: len(list(tmp_path.glob(f"ready-{r}-*"))) == 4, f"the four processes ready for round {r}",
                       interval=0.001)
            (tmp_path / f"go-{r}").touch()     # all four are spinning on this file
        outputs = [p.communicate(timeout=60)[0].split() for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    for r in range(rounds):
        keys = [out[r] for out in outputs]
        folder = tmp_path / f"config-{r}" / "nbbuild"
        assert keys == [(folder / "key").read_bytes().hex()] * 4, r
        assert os.listdir(folder) == ["key"]


def test_a_key_others_can_read_is_made_private_with_a_warning(config, caplog):
    key = user_key()
    path = config / "nbbuild" / "key"
    os.chmod(path, 0o644)
    assert user_key() == key
    assert path.stat().st_mode & 0o777 == 0o600
    [warning] = _warnings(caplog)
    assert str(path) in warning and "other users" in warning
    caplog.clear()
    assert user_key() == key and _warnings(caplog) == []      # private now: no second warning


def test_an_unwritable_config_directory_gives_a_key_for_this_process_only(tmp_path, monkeypatch, caplog):
    # as root permissions do not stop anything: a regular file where a directory should be does
    (tmp_path / "plain-file").write_text("not a directory")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "plain-file" / "config"))
    monkeypatch.setattr(signing, "_ephemeral", None)
    key = user_key()
    assert len(key) == 32 and user_key() == key and user_key() == key
    [warning] = _warnings(caplog)
    assert "no signing key could be kept" in warning and "this process only" in warning
    # another process has a key of its own: nothing this one stores is trusted there
    env = dict(os.environ, XDG_CONFIG_HOME=str(tmp_path / "plain-file" / "config"))
    other = subprocess.run([sys.executable, "-c", "from nbbuild.store.signing import user_key; print(user_key().hex())"],
                           check=True, capture_output=True, text=True, env=env).stdout.strip()
    assert len(other) == 64 and other != key.hex()


def test_a_sealed_row_opens_only_with_its_key_row_and_bytes():
    signer = Signer(b"k" * 32)
    sealed = signer.seal("v:abc", b"payload")
    assert len(sealed) == MAC_BYTES + len(b"payload")
    assert bytes(signer.open("v:abc", sealed)) == b"payload"
    assert signer.open("v:abd", sealed) is None                    # another row
    assert Signer(b"j" * 32).open("v:abc", sealed) is None          # another key
    for i in range(len(sealed)):                                     # any flipped byte, MAC or data
        damaged = bytearray(sealed)
        damaged[i] ^= 0x01
        assert signer.open("v:abc", bytes(damaged)) is None, i
    assert signer.open("v:abc", sealed[:-1]) is None                # truncated
    assert signer.open("v:abc", sealed + b"x") is None              # extended
    assert signer.open("v:abc", sealed[:MAC_BYTES - 1]) is None      # shorter than a MAC
    assert signer.open("v:abc", b"") is None


def test_a_partial_signature_covers_its_prefix_only():
    signer = Signer(b"k" * 32)
    sealed = signer.seal("v:abc", b"headerBULK", signed=6)
    assert bytes(signer.open("v:abc", sealed, signed=6)) == b"headerBULK"
    assert bytes(signer.open("v:abc", sealed[:-4] + b"bulk", signed=6)) == b"headerbulk"   # the hash guards the bulk
    assert signer.open("v:abc", sealed[:MAC_BYTES] + b"HEADERBULK", signed=6) is None
    assert signer.open("v:abc", sealed, signed=7) is None
    assert signer.open("v:abc", sealed, signed=100) is None          # claims more than there is
