"""The sandbox's PostgreSQL: a throwaway cluster of the installed server on 127.0.0.1.

initdb and postgres refuse to run as root, so as root they run as the
``postgres`` user (``runuser``). That user cannot enter a root-only directory
(pytest's temp root is mode 700), so as root the data directory is a mkdtemp of
its own under the system temp dir, linked from ``D/pgdata`` for people to find.
Trust authentication on loopback: the DSN carries no password.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..net import free_port, port_open
from .supervisor import SandboxError, wait_until

DATABASE = "defillama"
_SERVER_USER = "postgres"


@dataclass(frozen=True)
class PostgresInfo:
    pid: int
    port: int
    data_dir: Path
    bin_dir: Path
    log_path: Path
    dsn: str

    def component(self) -> dict[str, object]:
        """The entry recorded in state.json ``components``."""
        return {
            "pid": self.pid,
            "port": self.port,
            "data_dir": str(self.data_dir),
            "bin_dir": str(self.bin_dir),
            "log": str(self.log_path),
            "cmd": [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)],
            # What /proc/PID/cmdline must contain for this PID to still be our postmaster.
            "markers": ["postgres", str(self.data_dir)],
        }


def find_bin_dir(root: str = "/usr/lib/postgresql") -> Path:
    """The newest installed PostgreSQL server's bin directory, whatever its major version (Debian's layout
    ``root/N/bin``, then ``pg_ctl`` on PATH)."""
    candidates = sorted(glob.glob(f"{root}/*/bin"), key=lambda p: int(Path(p).parent.name)
                        if Path(p).parent.name.isdigit() else 0)
    for candidate in reversed(candidates):
        if (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    pg_ctl = shutil.which("pg_ctl")
    if pg_ctl:
        return Path(pg_ctl).parent
    raise SandboxError(
        "PostgreSQL server not found (looked for /usr/lib/postgresql/*/bin/pg_ctl and pg_ctl on PATH); "
        "install it with `apt-get install -y postgresql`"
    )


def _as_server_user(argv: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", _SERVER_USER, "--", *argv]
    return argv


def _run(argv: list[str], what: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        result = subprocess.run(_as_server_user(argv), capture_output=True, text=True, timeout=timeout,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise SandboxError(f"postgres: {what} did not finish within {timeout:.0f}s ({' '.join(argv)})") from None
    if result.returncode != 0:
        raise SandboxError(
            f"postgres: {what} failed with exit code {result.returncode} ({' '.join(argv)}):\n"
            f"{(result.stderr or result.stdout).strip()[-2000:]}"
        )
    return result


def _make_data_dir(state_dir: Path) -> Path:
    link = state_dir / "pgdata"
    if os.geteuid() != 0:
        link.mkdir(parents=True, exist_ok=True)
        return link
    data_dir = Path(tempfile.mkdtemp(prefix="llamadeploy-pgdata-"))
    shutil.chown(data_dir, user=_SERVER_USER, group=_SERVER_USER)
    os.chmod(data_dir, 0o700)
    if link.is_symlink() or link.exists():
        _remove_path(link)
    link.symlink_to(data_dir)
    return data_dir


def _remove_path(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _postmaster_pid(data_dir: Path) -> int | None:
    try:
        first = (data_dir / "postmaster.pid").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first) if first.strip().isdigit() else None


def start(state_dir: Path, timeout: float = 60.0) -> PostgresInfo:
    """A fresh cluster (a copy of an initdb template) on a free loopback port, with the ``defillama`` database."""
    state_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = find_bin_dir()
    data_dir = _make_data_dir(state_dir)
    try:
        return _init_and_start(state_dir, bin_dir, data_dir, timeout)
    except BaseException:
        # Not yet recorded in the state, so nobody else would ever stop or delete it.
        stop({"data_dir": str(data_dir), "bin_dir": str(bin_dir), "pid": _postmaster_pid(data_dir) or 0})
        shutil.rmtree(data_dir, ignore_errors=True)
        raise


def _initdb_argv(bin_dir: Path, data_dir: Path) -> list[str]:
    return [str(bin_dir / "initdb"), "-D", str(data_dir), "--auth=trust", "-N", "-U", _SERVER_USER,
            "--encoding=UTF8", "--locale=C"]


def _template_dir(bin_dir: Path) -> Path:
    """Where the initialised cluster for this server version and user is kept (shared by every sandbox)."""
    import hashlib

    key = hashlib.sha256(" ".join(_initdb_argv(bin_dir, Path("-"))).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"llamadeploy-pgtemplate-{os.geteuid()}-{key}"


def _template_ok(template: Path) -> bool:
    return (template / "PG_VERSION").is_file() and (template / "global" / "pg_control").is_file()


def _ensure_template(bin_dir: Path, timeout: float) -> Path:
    """An initialised, never started cluster: copying it (~0.5 s) replaces initdb (~1.1 s, more under load).

    Built in a private folder and renamed into place, so concurrent sandboxes never see half a template.
    """
    template = _template_dir(bin_dir)
    if _template_ok(template):
        return template
    build = Path(tempfile.mkdtemp(prefix="llamadeploy-pgtemplate-build-"))
    try:
        if os.geteuid() == 0:
            shutil.chown(build, user=_SERVER_USER, group=_SERVER_USER)
        os.chmod(build, 0o700)
        _run(_initdb_argv(bin_dir, build), "initdb (template)", timeout)
        try:
            os.rename(build, template)
        except OSError:
            if not _template_ok(template):  # not a lost race with another sandbox: a broken leftover
                shutil.rmtree(template, ignore_errors=True)
                os.rename(build, template)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    return template


def _initialise(bin_dir: Path, data_dir: Path, timeout: float) -> None:
    """Fill data_dir with a fresh cluster: a copy of the template, or initdb when that fails."""
    try:
        template = _ensure_template(bin_dir, timeout)
        # cp -a keeps owner and modes (the postgres user, 0700) where shutil.copytree would not.
        subprocess.run(["cp", "-a", f"{template}/.", str(data_dir)], check=True, capture_output=True,
                       timeout=timeout, stdin=subprocess.DEVNULL)
        return
    except (SandboxError, OSError, subprocess.SubprocessError) as exc:
        print(f"postgres: template copy failed ({exc}); running initdb", flush=True)
    for child in data_dir.iterdir():
        _remove_path(child)
    _run(_initdb_argv(bin_dir, data_dir), "initdb", timeout)


def _init_and_start(state_dir: Path, bin_dir: Path, data_dir: Path, timeout: float) -> PostgresInfo:
    _initialise(bin_dir, data_dir, timeout)
    log_path = data_dir / "server.log"
    last_error: SandboxError | None = None
    for _attempt in range(3):
        port = free_port()
        options = (f"-p {port} -k {data_dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off")
        try:
            _run([str(bin_dir / "pg_ctl"), "-w", "-t", str(int(timeout)), "-D", str(data_dir),
                  "-l", str(log_path), "-o", options, "start"], f"start on port {port}", timeout + 5)
        except SandboxError as exc:
            # Most likely another process took the port between free_port() and bind: try another.
            last_error = exc
            continue
        pid = _postmaster_pid(data_dir)
        if pid is None:
            raise SandboxError(f"postgres: started but {data_dir}/postmaster.pid is missing (log {log_path})")
        wait_until(partial(port_open, port), 10, f"postgres on 127.0.0.1:{port}", log_path=log_path)
        dsn = f"postgresql://{_SERVER_USER}@127.0.0.1:{port}/{DATABASE}"
        _create_database(port)
        return PostgresInfo(pid=pid, port=port, data_dir=data_dir, bin_dir=bin_dir, log_path=log_path, dsn=dsn)
    raise SandboxError(f"postgres: could not start after 3 ports: {last_error}")


def _create_database(port: int) -> None:
    import psycopg

    deadline = time.monotonic() + 10
    while True:
        try:
            with psycopg.connect(host="127.0.0.1", port=port, user=_SERVER_USER, dbname="postgres",
                                 autocommit=True, connect_timeout=3) as conn:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
                if not exists:
                    conn.execute(f'CREATE DATABASE "{DATABASE}"')
                return
        except psycopg.OperationalError as exc:
            # "the database system is starting up" right after pg_ctl -w on a slow machine.
            if time.monotonic() >= deadline:
                raise SandboxError(f"postgres: cannot create database {DATABASE} on port {port}: {exc}") from None
            time.sleep(0.1)


def stop(component: dict[str, object], timeout: float = 20.0) -> str:
    """Stop the recorded cluster (pg_ctl stop -m fast, signals as a fallback) and delete its data directory."""
    from .supervisor import pid_alive, stop_pid

    data_dir = Path(str(component.get("data_dir") or ""))
    pid = int(str(component.get("pid") or 0))
    markers = ["postgres", str(data_dir)]
    outcome = "not running"
    if str(data_dir) not in ("", ".") and (data_dir / "postmaster.pid").exists():
        bin_dir = Path(str(component.get("bin_dir") or find_bin_dir()))
        try:
            _run([str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "-t", str(int(timeout)),
                  "stop"], "stop", timeout + 5)
            outcome = "stopped"
        except SandboxError:
            outcome = "pg_ctl stop failed"
    if pid and pid_alive(pid):
        # pg_ctl could not do it (wedged postmaster, or its data dir is gone): signals.
        outcome = stop_pid(pid, markers, timeout=timeout, name="postgres")
    if data_dir.name.startswith(("llamadeploy-pgdata-", "pgdata")):
        shutil.rmtree(data_dir, ignore_errors=True)
    return outcome
