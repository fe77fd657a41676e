"""Where this process stands in the cluster that TF_CONFIG describes; no TensorFlow import."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass


class DistributionError(RuntimeError):
    """TF_CONFIG is missing or wrong, or a peer failed during training; the message says which."""


@dataclass(frozen=True)
class Cluster:
    """This process's place in the cluster TF_CONFIG describes."""

    workers: int  # every task that trains (the `chief` job, if any, and the `worker` job)
    task_type: str
    task_index: int
    has_chief_job: bool = False

    @property
    def is_chief(self) -> bool:
        """The chief writes and logs: task `chief` 0, or worker 0 when there is no chief job."""
        return self.task_type == "chief" or (
            self.task_type == "worker" and self.task_index == 0 and not self.has_chief_job
        )


def cluster_from_environment(environ: Mapping[str, str] = os.environ) -> Cluster:
    """Read TF_CONFIG, the standard `{"cluster": {...}, "task": {"type", "index"}}` JSON."""
    text = environ.get("TF_CONFIG")
    if not text:
        raise DistributionError(
            "train.distribution is multi_worker but TF_CONFIG is not set; set it to "
            '{"cluster": {"worker": ["host:port", ...]}, "task": {"type": "worker", "index": i}}'
        )
    try:
        described = json.loads(text)
        cluster, task = described["cluster"], described["task"]
        task_type, task_index = task["type"], int(task["index"])
        jobs = {job: list(addresses) for job, addresses in cluster.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DistributionError(
            f"TF_CONFIG is not a valid cluster description: {error!r}"
        ) from None
    unknown = sorted(set(jobs) - {"chief", "worker"})
    if unknown:
        raise DistributionError(
            f"TF_CONFIG: jobs {unknown} are not supported, only chief and worker"
        )
    if task_type not in jobs or not 0 <= task_index < len(jobs[task_type]):
        raise DistributionError(f"TF_CONFIG: task {task_type}:{task_index} is not in its cluster")
    if len(jobs.get("chief", [])) > 1:
        raise DistributionError("TF_CONFIG: at most one chief")
    workers = sum(len(addresses) for addresses in jobs.values())
    return Cluster(workers, task_type, task_index, has_chief_job="chief" in jobs)


def check_batch_split(batch_size: int, workers: int) -> int:
    """The per-worker batch; the global batch must split evenly between the workers."""
    if batch_size % workers:
        raise DistributionError(
            f"train.batch_size ({batch_size}) must be a multiple of the number of workers "
            f"({workers}) in TF_CONFIG, so each worker takes an equal share of every batch"
        )
    return batch_size // workers
