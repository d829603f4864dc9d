"""Text around a generative model: its tokenizer, incremental detokenisation, the chat
template and stop strings. Depends on core only; used by the generation engine."""
