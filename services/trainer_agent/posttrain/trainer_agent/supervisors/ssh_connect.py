"""Opening an SSH connection for a ``run_mode: ssh`` stage: credentials and host keys.

The pipeline's ``ssh_config`` names a key secret; this module resolves it on the agent's own
host (``POSTTRAIN_SECRET_<NAME>``, else the file ``<POSTTRAIN_SECRETS_DIR>/<NAME>``, by default
``~/.config/posttrain/secrets/<NAME>``), so no key ever travels in a pipeline, an event or a log.
Every error raised here names the host or the secret, never the key's bytes.

Host keys are checked against known_hosts: a key that differs from the recorded one is always
refused; a host not in the file is refused under ``known_hosts: strict`` and recorded on first
contact under ``known_hosts: accept_new``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import asyncssh

from posttrain.events.tasks import SshConfig

ENV_SECRETS_DIR = "POSTTRAIN_SECRETS_DIR"
SECRET_ENV_PREFIX = "POSTTRAIN_SECRET_"
DEFAULT_SECRETS_DIR = Path("~/.config/posttrain/secrets")
CONNECT_TIMEOUT_S = 20.0


class SshError(Exception):
    """A failure to reach or use the remote host; the message is safe to log and to report."""


class HostKeyRefused(SshError):
    """The remote host showed a key that known_hosts does not vouch for."""


def secret_env_name(name: str) -> str:
    return SECRET_ENV_PREFIX + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def resolve_secret(name: str) -> str:
    """The text of a secret named by a pipeline, from the agent host's environment or files."""
    from_env = os.environ.get(secret_env_name(name))
    if from_env:
        return from_env
    directory = Path(os.environ.get(ENV_SECRETS_DIR) or DEFAULT_SECRETS_DIR).expanduser()
    path = directory / name
    try:
        return path.read_text()
    except OSError:
        raise SshError(
            f"secret {name!r} not found on this agent: set {secret_env_name(name)} or write "
            f"the key to {path}"
        ) from None


def known_hosts_path(config: SshConfig) -> Path:
    return Path(config.known_hosts_file or "~/.ssh/known_hosts").expanduser()


def _host_label(config: SshConfig) -> str:
    return config.host if config.port == 22 else f"[{config.host}]:{config.port}"


def _is_known(config: SshConfig, path: Path) -> bool:
    if not path.exists():
        return False
    known = asyncssh.read_known_hosts(str(path))
    host_keys, ca_keys, *_ = known.match(config.host, config.host, config.port)
    return bool(host_keys or ca_keys)


def _client_keys(config: SshConfig) -> list[asyncssh.SSHKey] | tuple[()]:
    if config.key_secret is None:
        return ()  # the library's default: the ssh-agent's keys (agent: true)
    try:
        return [asyncssh.import_private_key(resolve_secret(config.key_secret))]
    except (asyncssh.KeyImportError, ValueError):
        # The library's message may quote the data: say which secret, not what it holds.
        raise SshError(f"secret {config.key_secret!r} is not a readable private key") from None


async def connect(config: SshConfig) -> asyncssh.SSHClientConnection:
    """A connection to the configured host, its key checked; raises ``SshError``."""
    path = known_hosts_path(config)
    known = _is_known(config, path)
    if not known and config.known_hosts == "strict":
        raise HostKeyRefused(
            f"host {config.host}:{config.port} is not in {path}: add its key there "
            "(ssh-keyscan), or set ssh_config.known_hosts: accept_new"
        )
    try:
        conn = await asyncssh.connect(
            config.host,
            port=config.port,
            username=config.user,
            client_keys=_client_keys(config),
            agent_path=() if config.agent else None,
            known_hosts=str(path) if known else None,
            # The user's ~/.ssh/config is not the pipeline's: only ssh_config applies.
            config=None,
            connect_timeout=CONNECT_TIMEOUT_S,
            keepalive_interval=5,
            keepalive_count_max=3,
        )
    except asyncssh.HostKeyNotVerifiable:
        raise HostKeyRefused(
            f"host key of {config.host}:{config.port} does not match {path}: refused "
            "(if the host was reinstalled, replace its line there)"
        ) from None
    except asyncssh.PermissionDenied:
        raise SshError(
            f"{config.user}@{config.host}:{config.port} refused the credentials "
            f"({'ssh-agent' if config.agent else 'secret ' + repr(config.key_secret)})"
        ) from None
    if not known:
        key = conn.get_server_host_key()
        if key is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            line = f"{_host_label(config)} {key.export_public_key('openssh').decode().strip()}"
            _append_line(path, line)
    return conn


def _append_line(path: Path, line: str) -> None:
    with open(path, "a") as fh:
        fh.write(line + "\n")
