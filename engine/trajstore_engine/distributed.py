"""Several GPUs: FSDP2 (``torch.distributed.fsdp.fully_shard``) under torchrun.

    torchrun --nproc-per-node 2 -m trajstore_engine serve

Every rank runs the same engine; rank 0 alone reads commands from stdin and writes replies, and
broadcasts each command to the other ranks before all of them execute it (``server.py``). Each rank
reads the batch file itself (one host, one filesystem) and takes every world_size-th micro-batch.

What is sharded: each decoder layer (base weights and LoRA weights), with the decoder as the FSDP
root. The embedding, the final norm and the lm_head stay whole on every GPU: they are frozen, and
the chunked logprob function uses the lm_head weight directly. Mixed precision: parameters are
gathered in bf16, gradients reduced in float32 onto float32 LoRA master weights. Gradients are
summed, not averaged, across ranks: the loss weights already normalize over the whole batch.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device | None = None
    enabled: bool = False
    mesh: object = None

    @classmethod
    def single(cls) -> "DistContext":
        return cls()

    @classmethod
    def from_env(cls) -> "DistContext":
        """Join the process group when started by torchrun (WORLD_SIZE > 1); else single process."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls.single()
        import torch.distributed as dist
        from torch.distributed.device_mesh import init_device_mesh

        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
        if torch.cuda.is_available():
            torch.cuda.set_device(local)
            device, backend, kind = torch.device("cuda", local), "nccl", "cuda"
        else:
            device, backend, kind = torch.device("cpu"), "gloo", "cpu"
        timeout = datetime.timedelta(seconds=int(os.environ.get("TRAJSTORE_DIST_TIMEOUT_S", "1800")))
        dist.init_process_group(backend=backend, timeout=timeout,
                                device_id=device if kind == "cuda" else None)
        mesh = init_device_mesh(kind, (world,))
        return cls(rank=rank, world_size=world, local_rank=local, device=device, enabled=True, mesh=mesh)

    def shard(self, decoder, param_dtype: torch.dtype) -> None:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # Gradients are reduced in float32 (bf16 sums lose too much), or in float64 for a float64
        # model: reducing below the parameters' precision would make ranks differ from one process.
        full = param_dtype in (torch.float32, torch.float64)
        mp = MixedPrecisionPolicy(param_dtype=None if full else param_dtype,
                                  reduce_dtype=param_dtype if full else torch.float32)
        layers = list(decoder.layers)
        for layer in layers:
            fully_shard(layer, mesh=self.mesh, mp_policy=mp, reshard_after_forward=True)
        layer_params = {id(p) for layer in layers for p in layer.parameters()}
        ignored = {p for p in decoder.parameters() if id(p) not in layer_params}
        fully_shard(decoder, mesh=self.mesh, mp_policy=mp, ignored_params=ignored)
        for module in [decoder, *layers]:
            module.set_gradient_divide_factor(1.0)  # sum, not mean: the loss weights normalize
            module.set_force_sum_reduction_for_comms(True)  # plain SUM (gloo has no PREMUL_SUM)

    def sum_cpu(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a CPU tensor over ranks (identity when single)."""
        if not self.enabled:
            return t
        import torch.distributed as dist

        d = t.to(self.device)
        dist.all_reduce(d)
        return d.cpu()

    def broadcast_object(self, obj):
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            if dist.is_initialized():
                # Every rank finishes its outstanding collectives before any tears the group
                # down: a rank whose peer had already destroyed the group sometimes aborted in
                # gloo's teardown ("terminate called without an active exception", exit -6),
                # turning a clean shutdown into a failed torchrun job.
                dist.barrier()
                dist.destroy_process_group()
