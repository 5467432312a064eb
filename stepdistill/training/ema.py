"""The EMA of sharded weights (FSDP over CPU processes, `stepdistill.sharding`)."""

from __future__ import annotations

from diffusers.training_utils import EMAModel

from ..sharding import full, is_sharded_tensor


class ShardedEMA(EMAModel):
    """diffusers' `EMAModel` over sharded weights: its shadows are sharded as the weights are; a checkpoint holds
    them whole (gathered on every process, written by rank 0) and a resume shards them again."""

    def state_dict(self) -> dict:
        return {**super().state_dict(), "shadow_params": [full(p).detach().cpu() for p in self.shadow_params]}

    def load_state_dict(self, state: dict) -> None:
        from torch.distributed.tensor import distribute_tensor

        shadows = [distribute_tensor(p.to(ref.device, ref.dtype), ref.device_mesh, ref.placements)
                   if is_sharded_tensor(ref) else p for p, ref in zip(state["shadow_params"], self.shadow_params)]
        super().load_state_dict({**state, "shadow_params": shadows})
