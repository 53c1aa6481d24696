"""The encoder pair: DPR's question and passage encoders, how they load, run and are fingerprinted.

- :mod:`~dpr_pg.encoders.pair`: ``EncoderPair``, ``QuestionEncoder``, ``PassageEncoder``.
- :mod:`~dpr_pg.encoders.batching`: length-sorted batches, out-of-memory fallback, ``EncodeResult``.
- :mod:`~dpr_pg.encoders.loading`: a model and its fast tokenizer from the Hub or a folder.
- :mod:`~dpr_pg.encoders.precision`: fp32, bf16, fp16, int8 (``PRECISIONS``), and the default per device;
  :mod:`~dpr_pg.encoders.bf16_probe` measures whether bf16 pays on this CPU.
- :mod:`~dpr_pg.encoders.onnx_runtime`: the same weights on ONNX Runtime (the question encoder's CPU path).
- :mod:`~dpr_pg.encoders.cuda_graphs`: static-shape question encoding with CUDA graphs.
- :mod:`~dpr_pg.encoders.fingerprint`: ``EncoderFingerprint``, recorded per vector and checked per search.
- :mod:`~dpr_pg.encoders.question_side`: what a search needs of a pair, without the passage weights.
- :mod:`~dpr_pg.encoders.tiny` and :mod:`~dpr_pg.encoders.trained`: offline pairs for tests and demos.

Nothing is imported here, so that a module of this package loads torch only if it needs it.
"""
