"""Greedy decoding under a GBNF grammar on llama.cpp, one token at a time:
the loop :class:`~appliance.agent.backends.LlamaCppBackend` generates with."""

from __future__ import annotations

from typing import Any

from appliance.agent.errors import ModelError


class GreedyGrammar:
    """Greedy decoding under a GBNF grammar, the way llama.cpp's own common
    sampler does it: take the model's most likely token, ask the grammar
    about that one token, and only when the grammar refuses it mask the
    whole vocabulary (151,936 tokens for Qwen) and take the most likely token
    the grammar allows. For greedy decoding the answer is the same as
    masking every step; it costs one grammar check per token instead of
    one per vocabulary entry. Also gives each chosen token's log-probability
    under the model's own distribution (before the grammar)."""

    def __init__(self, llama_cpp: Any, llm: Any, grammar: Any) -> None:
        import numpy as np

        self._np = np
        self._lc = llama_cpp
        self._llm = llm
        self._n_vocab = llm.n_vocab()
        self._sampler = None
        if grammar is not None:
            self._sampler = llama_cpp.llama_sampler_init_grammar(
                llm._model.vocab, grammar._grammar.encode(), grammar._root.encode()
            )
            if not self._sampler:
                raise ModelError("llama.cpp could not load the answer grammar")
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(
            data=self._one, size=1, selected=-1, sorted=False
        )
        self._full: Any = None

    def close(self) -> None:
        if self._sampler is not None:
            self._lc.llama_sampler_free(self._sampler)
            self._sampler = None

    def _allowed(self, token: int) -> bool:
        self._one[0].id = token
        self._one[0].logit = 0.0
        self._one_array.size = 1
        self._lc.llama_sampler_apply(self._sampler, self._lc.byref(self._one_array))
        return bool(self._one[0].logit != float("-inf"))

    def _masked_best(self, logits: Any) -> int | None:
        from llama_cpp._internals import LlamaTokenDataArray

        if self._full is None:
            self._full = LlamaTokenDataArray(n_vocab=self._n_vocab)
        full = self._full
        full.copy_logits(logits)
        self._lc.llama_sampler_apply(self._sampler, self._lc.byref(full.candidates))
        size = int(full.candidates.size)
        masked = full.candidates_data.logit[:size]
        best = int(masked.argmax())
        if masked[best] == float("-inf"):
            return None  # the grammar allows nothing: a dead end
        return int(full.candidates_data.id[best])

    def next(self) -> tuple[int | None, float]:
        """The next token (None when the grammar allows none) and the model's
        log-probability of it."""
        np = self._np
        ctx = self._llm._ctx.ctx
        logits = np.ctypeslib.as_array(
            self._lc.llama_get_logits_ith(ctx, -1), shape=(self._n_vocab,)
        )
        best = int(logits.argmax())
        token: int | None = best
        if self._sampler is not None and not self._allowed(best):
            token = self._masked_best(logits)
        if token is None:
            return None, 0.0
        top = float(logits[best])  # the largest logit
        lse = top + float(np.log(np.exp(logits - top, dtype=np.float64).sum()))
        if self._sampler is not None:
            self._lc.llama_sampler_accept(self._sampler, token)
        return token, float(logits[token]) - lse
