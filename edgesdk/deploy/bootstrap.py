"""Create a slot's runtime: SLOT/runtime/venv with edgesdk and its dependencies installed from the
wheels the package carries (SLOT/runtime/wheels/), offline. Shipped inside packages as
runtime/bootstrap.py; standard library only, so a device's system Python runs it before any edgesdk
is installed there:

    python3 /opt/edgesdk/current/runtime/bootstrap.py [--check]

`install` runs it as a step of its state machine; a staged image runs it at first boot (the service's
ExecStartPre). It is idempotent and atomic:
  - the venv is built at its final real path SLOT/runtime/venv-<key16> (a venv's scripts and
    shebangs embed their path, so it is never moved), then marked complete (edgesdk-runtime.json,
    written last), then SLOT/runtime/venv -> venv-<key16> is made by renaming a symlink over it;
    `venv` therefore only ever names a complete venv;
  - <key> is the sha256 of the runtime's description in package.json (Python, wheel names and their
    sha256): a marked venv of the same key is reused, anything else named venv-* was left by an
    interrupted run (or is of another wheel set) and is removed under an flock of SLOT/runtime;
  - pip runs from the packaged pip wheel with --isolated --no-index: no index, no pip config and no
    PIP_*/PYTHON* variables of the caller take part.
Paths come from the slot it lives in (its real path, so `current` switching later changes nothing
for a venv already built). The package's signature was checked by the install that extracted the
slot; this script re-checks each wheel's size and sha256 against package.json before using it.
EDGESDK_FAULT_AT=runtime-venv|runtime-pip|runtime-marker|runtime-link (a test hook) kills it with
SIGKILL as that step begins. Exit status: 0 ready, 1 not ready (--check), 2 refused or failed."""

import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time

MARKER, LINK, PREFIX = "edgesdk-runtime.json", "venv", "venv-"
OURS = re.compile(r"venv-[0-9a-f]{16}\Z")  # PREFIX + a key's first 16 hex digits: the only names this script makes
FAULT_ENV, REEXEC_ENV = "EDGESDK_FAULT_AT", "EDGESDK_BOOTSTRAP_REEXEC"
WHEEL = re.compile(r"runtime/wheels/[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,250}\.whl")


class Refused(Exception):
    """The runtime cannot be created here; the message says why."""


def fault(step):
    if os.environ.get(FAULT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def log(msg):
    print("edgesdk runtime: " + msg, flush=True)


def describe(slot):
    """(runtime description, members) from SLOT/package.json."""
    path = os.path.join(slot, "package.json")
    try:
        with open(path, "rb") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise Refused("%s: cannot read the package manifest (%s)" % (path, e)) from None
    rt, members = d.get("runtime"), d.get("members")
    if not isinstance(rt, dict) or not rt or not isinstance(members, dict):
        raise Refused("%s: this package carries no runtime" % path)
    describe_dict(rt, members, path)
    return rt, members


def describe_dict(rt, members, where):
    """Refused naming WHERE unless RT (package.json's runtime) names wheels that are members."""
    wheels = rt.get("wheels")
    if (
        not isinstance(wheels, list)
        or not wheels
        or not all(isinstance(w, str) and WHEEL.fullmatch(w) and w in members for w in wheels)
    ):
        raise Refused("%s: runtime.wheels must list runtime/wheels/*.whl members" % where)
    for k in ("edgesdk", "pip"):
        if rt.get(k) not in wheels:
            raise Refused("%s: runtime.%s must be one of runtime.wheels" % (where, k))
    if not isinstance(rt.get("python"), str) or not re.fullmatch(r"3\.\d{1,2}", rt["python"]):
        raise Refused('%s: runtime.python must be like "3.10"' % where)


def key_of(rt, members):
    """What the venv is built from: Python, site-packages choice and every wheel's name and sha256."""
    what = {
        "python": rt["python"],
        "system_site_packages": bool(rt.get("system_site_packages")),
        "edgesdk": rt["edgesdk"],
        "wheels": {w: members[w].get("sha256") for w in rt["wheels"]},
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def marked(venv, key):
    """VENV's marker when it says the venv is complete and built from KEY; else None."""
    try:
        with open(os.path.join(venv, MARKER)) as f:
            mark = json.load(f)
    except (OSError, ValueError):
        return None
    ok = isinstance(mark, dict) and mark.get("key") == key and os.access(os.path.join(venv, "bin", "python"), os.X_OK)
    return mark if ok else None


def ready(rtdir, key):
    """The venv SLOT/runtime/venv names, when it is complete and built from KEY; else None."""
    link = os.path.join(rtdir, LINK)
    if not os.path.islink(link) or os.readlink(link) != PREFIX + key[:16]:
        return None
    venv = os.path.join(rtdir, PREFIX + key[:16])
    return venv if marked(venv, key) else None


def state(slot):
    """ "none" (no runtime), "ready" or "not installed": read-only, for status reports."""
    try:
        rt, members = describe(slot)
    except Refused:
        return "none"
    return "ready" if ready(os.path.join(slot, "runtime"), key_of(rt, members)) else "not installed"


def _python_for(rt):
    """Re-exec under python<X.Y> when this interpreter is another version; Refused when none is."""
    want, have = rt["python"], "%d.%d" % sys.version_info[:2]
    if rt.get("machine") and rt["machine"] != platform.machine():
        raise Refused("the runtime's wheels are for %s; this machine is %s" % (rt["machine"], platform.machine()))
    if want == have:
        return
    if os.environ.get(REEXEC_ENV) != "1":
        for cand in ("/usr/bin/python" + want, shutil.which("python" + want)):
            if cand and os.access(cand, os.X_OK):
                env = dict(os.environ, **{REEXEC_ENV: "1"})
                os.execve(cand, [cand, "-E", "-s", os.path.realpath(__file__)] + sys.argv[1:], env)
    raise Refused(
        "this is Python %s; the runtime's wheels are for Python %s, which is not installed here "
        "(python%s)" % (have, want, want)
    )


def _check_wheels(slot, rt, members):
    for w in rt["wheels"]:
        path, want = os.path.join(slot, w), members[w]
        h, n = hashlib.sha256(), 0
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
                    n += len(block)
        except OSError as e:
            raise Refused("%s: %s" % (path, e.strerror)) from None
        if n != want.get("bytes") or h.hexdigest() != want.get("sha256"):
            raise Refused("%s: size or sha256 differs from package.json (changed after install)" % path)


def _run(cmd, what):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, env=env)
    if r.returncode != 0:
        tail = "\n".join(r.stdout.strip().splitlines()[-25:])
        raise Refused("%s failed (exit status %s):\n%s" % (what, r.returncode, tail))
    return r.stdout


def _fsync_tree(top):
    for dirpath, _dirs, files in os.walk(top):
        for name in files + [""]:
            p = os.path.join(dirpath, name) if name else dirpath
            if os.path.islink(p):
                continue
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _build(slot, rt, members, key, venv):
    """Create VENV and install the runtime into it from the wheels; the marker written last."""
    _check_wheels(slot, rt, members)
    if os.path.isdir(venv):
        shutil.rmtree(venv)  # unmarked: half built (only under the lock, only ours by name)
    t0 = time.time()
    fault("runtime-venv")
    site = ["--system-site-packages"] if rt.get("system_site_packages") else []
    _run([sys.executable, "-E", "-s", "-m", "venv", "--without-pip"] + site + [venv], "python -m venv")
    fault("runtime-pip")
    pip = os.path.join(slot, rt["pip"], "pip")  # pip runs from its wheel (zipimport)
    out = _run(
        [
            os.path.join(venv, "bin", "python"),
            "-E",
            "-s",
            pip,
            "install",
            "--isolated",
            "--no-index",
            "--find-links",
            os.path.join(slot, "runtime", "wheels"),
            "--only-binary=:all:",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--ignore-installed",
            "--progress-bar",
            "off",
            os.path.join(slot, rt["edgesdk"]),
        ],
        "pip install (offline)",
    )
    installed = [ln for ln in out.splitlines() if ln.startswith("Successfully installed")]
    fault("runtime-marker")
    _fsync_tree(venv)
    mark = {
        "key": key,
        "python": rt["python"],
        "wheels": len(rt["wheels"]),
        "seconds": round(time.time() - t0, 1),
        "installed": installed[0][len("Successfully installed ") :].split() if installed else [],
    }
    tmp = os.path.join(venv, ".%s.tmp" % MARKER)
    with open(tmp, "w") as f:
        json.dump(mark, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, os.path.join(venv, MARKER))
    return mark


def ensure(slot):
    """SLOT's runtime venv, built unless a complete one of the same wheel set is there."""
    rt, members = describe(slot)
    _python_for(rt)
    rtdir = os.path.join(slot, "runtime")
    key = key_of(rt, members)
    venv = ready(rtdir, key)
    if venv:
        log("ready: %s (nothing to do)" % venv)
        return venv
    fd = os.open(rtdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # one builder per slot; closing the fd releases it
        venv = ready(rtdir, key)
        if venv:
            log("ready: %s (built by a concurrent run)" % venv)
            return venv
        link = os.path.join(rtdir, LINK)
        if os.path.lexists(link) and not os.path.islink(link):
            raise Refused("%s: exists and is not the symlink this script makes; move it away" % link)
        keep = os.readlink(link) if os.path.islink(link) else None
        if keep is not None and not OURS.match(keep):
            # someone pointed it elsewhere (their own venv?): the old target is removed once relinked,
            # so a target this script did not make is refused, never deleted
            raise Refused("%s: points to %s, not a venv this script made; remove the link" % (link, keep))
        name = PREFIX + key[:16]
        venv = os.path.join(rtdir, name)
        mark = marked(venv, key)  # complete and marked: an interrupted run only missed the link
        for other in sorted(os.listdir(rtdir)):  # what interrupted runs left: ours by name
            p = os.path.join(rtdir, other)
            if (
                OURS.match(other)
                and not (other == name and mark)
                and other != keep
                and os.path.isdir(p)
                and not os.path.islink(p)
            ):
                shutil.rmtree(p)
                log("removed %s (left by an interrupted run)" % other)
            elif other.startswith(".%s.tmp-" % LINK) and os.path.islink(p):
                os.unlink(p)
        if mark is None:
            mark = _build(slot, rt, members, key, venv)
            log(
                "built %s: %d packages in %.0f s (Python %s)"
                % (venv, len(mark["installed"]), mark["seconds"], rt["python"])
            )
        else:
            log("completing %s: built and marked by an interrupted run" % venv)
        fault("runtime-link")
        tmp = os.path.join(rtdir, ".%s.tmp-%d" % (LINK, os.getpid()))
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(PREFIX + key[:16], tmp)
        os.replace(tmp, link)
        os.fsync(fd)
        old = os.path.join(rtdir, keep) if keep else ""
        if keep and keep != name and os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old)  # a venv of another wheel set, no longer named
        return venv
    finally:
        os.close(fd)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    slot = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
    try:
        if argv == ["--check"]:
            st = state(slot)
            log("%s: %s" % (slot, st))
            return 0 if st == "ready" else 1
        if argv:
            raise Refused("usage: python3 %s [--check]" % __file__)
        ensure(slot)
        return 0
    except Refused as e:
        print("edgesdk runtime: error: %s" % e, file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
