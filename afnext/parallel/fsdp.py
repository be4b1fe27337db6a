"""FSDP2 (`fully_shard`) for AF-Next, applied to a constructed model from outside.

Each encoder layer and each decoder layer is its own FSDP unit (parameters all-gathered just before
the layer runs and freed after); so are the encoder's remaining parts, the adapter and the token
embeddings; the root unit holds the final norm and the LM head. Model code is untouched.

Every rank must run every unit in every micro-batch, or the all-gathers of the ranks stop matching
and the job hangs; the trainer guarantees that (a text-only micro-batch still runs the encoder on a
silent window, contributing 0 to the loss).
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from afnext.model.afnext import AFNext


def data_parallel_mesh(device_type: str, world_size: int) -> DeviceMesh:
    return init_device_mesh(device_type, (world_size,), mesh_dim_names=("dp",))


def apply_fsdp(model: AFNext, mesh: DeviceMesh, *, param_dtype: torch.dtype | None = None,
               reshard_after_forward: bool = True) -> AFNext:
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else MixedPrecisionPolicy()
    for layer in model.encoder.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    for layer in model.llm.layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # The encoder (convs, positions, final norm), the adapter and the token embeddings are units of
    # their own: sequence-parallel training and the trainer's silent-window call run them directly,
    # outside the root module's forward, and a unit only gathers its parameters in its own forward.
    for unit in (model.encoder, model.adapter, model.llm.embed_tokens):
        fully_shard(unit, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    # FSDP2 picks its root lazily: the first unit whose forward runs. A direct encoder call before the
    # first full forward would make the encoder a root of its own; initialise from the true root now.
    from torch.distributed.fsdp._fully_shard._fsdp_state import _get_module_fsdp_state

    _get_module_fsdp_state(model)._lazy_init()
    return model
