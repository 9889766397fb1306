"""cluster.yaml as the launcher test runs it: Ray's `local` provider on two hosts made on this
machine (tests/test_launcher.py), derived from the shipped file so that the two cannot drift.

Only these change: the provider, the SSH user and key, the node types (the local provider has
one type: the machines as they are); paths (`/home/ubuntu` becomes the SSH user's home, the S3
bucket a folder every host sees, the token and the repository the test's own); and what
installs software from the internet (`apt-get`, `pip install`) is left out, because the hosts'
image has it, while the datasets are fetched `--from` a local copy.
"""

from __future__ import annotations

import copy
import getpass
import re
from pathlib import Path

# What reaches the internet to install software: the hosts' image already has it.
PROVISIONING = re.compile(r"\b(apt-get|pip install)\b")
BUCKET = "s3://CHANGE-awdsearch-bucket"
SHIPPED_HOME = "/home/ubuntu"
SHIPPED_REPO = re.compile(r"https://github\.com/CHANGE-OWNER/awdsearch\.git")
SHIPPED_TOKEN = "~/.ray/auth_token"


def derive_launcher_config(shipped: dict, *, name: str, head_ip: str, worker_ip: str,
                           key: Path, token: Path, home: Path, shared: Path, repo: Path,
                           data: Path) -> tuple[dict, list[str]]:
    """cluster.yaml for Ray's local provider on our hosts, and the commands left out."""
    config = copy.deepcopy(shipped)
    config["cluster_name"] = name
    config["provider"] = {"type": "local", "head_ip": head_ip, "worker_ips": [worker_ip]}
    config["auth"] = {"ssh_user": getpass.getuser(), "ssh_private_key": str(key)}
    del config["available_node_types"], config["head_node_type"]  # max_workers: Ray caps it
    config["file_mounts"] = {target: str(token) if source == SHIPPED_TOKEN else source
                             for target, source in config["file_mounts"].items()}

    def paths(value):
        if isinstance(value, str):
            value = value.replace(SHIPPED_HOME, str(home)).replace(BUCKET, str(shared))
            return SHIPPED_REPO.sub(str(repo), value)
        if isinstance(value, list):
            return [paths(v) for v in value]
        if isinstance(value, dict):
            return {paths(k): paths(v) for k, v in value.items()}
        return value

    config = paths(config)
    left_out: list[str] = []
    for key_name in [k for k in config if k.endswith("_commands")]:
        kept = []
        for command in config[key_name]:
            if PROVISIONING.search(command):
                left_out.append(command)
                continue
            kept.append(re.sub(r"(python -m awd\.data fetch) (\S+)",
                               lambda m: f"{m[1]} {m[2]} --from {data / m[2]}", command))
        config[key_name] = kept
    return config, left_out
