"""gcloud command lines, built as argv lists by pure functions so tests can read them.

Every command names its zone and project explicitly: a launcher that silently used whatever
`gcloud config` holds could create, or delete, a TPU in the wrong project. Every command that
touches the VMs of a slice targets `--worker=all`; a multi-host JAX program hangs at start-up when
one host does not run it.
"""
from __future__ import annotations

import dataclasses
import re

from bertjax.errors import UserError

GCLOUD = "gcloud"
TPU_VM = [GCLOUD, "compute", "tpus", "tpu-vm"]
QUEUED = [GCLOUD, "compute", "tpus", "queued-resources"]
# Without the cloud-platform scope the VM's service account cannot write checkpoints to GCS
# whatever its IAM roles; with it, IAM alone decides.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"

_NAME = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclasses.dataclass(frozen=True)
class Target:
    """One TPU VM (or the node of one queued resource of the same name)."""

    name: str
    zone: str
    project: str
    queued: bool = False
    internal_ip: bool = False

    def validate(self) -> None:
        if not _NAME.fullmatch(self.name or ""):
            raise UserError(
                f"--name={self.name!r} is not a valid TPU name; use lower-case letters, digits and "
                "hyphens, starting with a letter (at most 63 characters)")
        if not self.zone:
            raise UserError("--zone is required, e.g. --zone=us-central2-b")
        if not self.project:
            raise UserError("--project is required, e.g. --project=my-project")

    @property
    def where(self) -> list[str]:
        return [f"--zone={self.zone}", f"--project={self.project}"]


@dataclasses.dataclass(frozen=True)
class CreateSpec:
    accelerator_type: str  # gcloud's spelling, e.g. v4-8, v5litepod-16
    runtime_version: str
    spot: bool = False


def create(t: Target, spec: CreateSpec) -> list[str]:
    """A plain TPU VM (blocks until it exists) or a queued resource (returns once queued)."""
    common = [f"--accelerator-type={spec.accelerator_type}", f"--scopes={CLOUD_PLATFORM_SCOPE}"]
    spot = ["--spot"] if spec.spot else []
    if t.queued:
        return [*QUEUED, "create", t.name, f"--node-id={t.name}",
                f"--runtime-version={spec.runtime_version}", *common, *spot, *t.where]
    return [*TPU_VM, "create", t.name, f"--version={spec.runtime_version}", *common, *spot,
            *t.where]


def describe_node(t: Target) -> list[str]:
    return [*TPU_VM, "describe", t.name, *t.where, "--format=json"]


def describe_queued(t: Target) -> list[str]:
    return [*QUEUED, "describe", t.name, *t.where, "--format=json"]


def delete(t: Target, quiet: bool) -> list[str]:
    """Deletes the TPU (for a queued resource: the request and its node). Never touches storage."""
    q = ["--quiet"] if quiet else []
    if t.queued:
        return [*QUEUED, "delete", t.name, "--force", *t.where, *q]
    return [*TPU_VM, "delete", t.name, *t.where, *q]


def _ssh_opts(t: Target) -> list[str]:
    return ["--worker=all", *t.where, *(["--internal-ip"] if t.internal_ip else [])]


def ssh_all(t: Target, command: str) -> list[str]:
    """Runs `command` concurrently on every worker VM of the slice."""
    return [*TPU_VM, "ssh", t.name, *_ssh_opts(t), f"--command={command}"]


def scp_all(t: Target, local: str, remote: str) -> list[str]:
    """Copies one local file to `remote` on every worker VM of the slice."""
    return [*TPU_VM, "scp", local, f"{t.name}:{remote}", *_ssh_opts(t)]


def storage_ls(url: str, project: str) -> list[str]:
    return [GCLOUD, "storage", "ls", url, f"--project={project}"]


def storage_cat(url: str, project: str) -> list[str]:
    return [GCLOUD, "storage", "cat", url, f"--project={project}"]
