"""Attention forwards that read a value head dimension (`self.v_head_dim`) separate from the query/key one.

They are the installed transformers forwards with one change: the value projection is viewed with `v_head_dim`. The
surgery engine binds them to attention modules whose value channels were cut (see `AttentionGroup.v_head_dim_forward`);
the attention math allows it because values never meet queries or keys, only the softmax weights.
"""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.timesfm import modeling_timesfm
from transformers.models.timesfm2_5 import modeling_timesfm2_5


def timesfm_attention_forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
    input_shape = hidden_states.shape[:-1]
    query_states = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    query_states = self._scale_query(query_states)
    key_states = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    value_states = self.v_proj(hidden_states).view(*input_shape, -1, self.v_head_dim).transpose(1, 2)
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_timesfm.simple_eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        self,
        query_states,
        key_states,
        value_states,
        attention_mask,
        dropout=0.0 if not self.training else self.attention_dropout,
        scaling=1.0,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights


def timesfm2_5_attention_forward(
    self,
    hidden_states: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    attention_mask: torch.Tensor | None,
    cache=None,
    **kwargs,
):
    input_shape = hidden_states.shape[:-1]
    query_states = self.q_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    key_states = self.k_proj(hidden_states).view(*input_shape, -1, self.head_dim).transpose(1, 2)
    value_states = self.v_proj(hidden_states).view(*input_shape, -1, self.v_head_dim).transpose(1, 2)
    cos, sin = position_embeddings
    query_states, key_states = modeling_timesfm2_5.apply_rotary_pos_emb(query_states, key_states, cos, sin)
    query_states = self.q_norm(query_states)
    key_states = self.k_norm(key_states)
    scale = F.softplus(self.scaling).mul(1.442695041 / math.sqrt(self.head_dim))
    query_states = query_states * scale[None, None, None, :]
    if cache is not None:
        key_states, value_states = cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
    attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
        self.config._attn_implementation, modeling_timesfm2_5.eager_attention_forward
    )
    attn_output, attn_weights = attention_interface(
        self,
        query_states,
        key_states,
        value_states,
        attention_mask,
        dropout=self.attention_dropout if self.training else 0.0,
        scaling=1.0,
        **kwargs,
    )
    attn_output = attn_output.reshape(*input_shape, -1).contiguous()
    return self.o_proj(attn_output), attn_weights
