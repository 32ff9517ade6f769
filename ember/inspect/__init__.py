"""Looking inside a model: the token trace, attention maps and head summaries, the logit
and tuned lens, embedding geometry, and causal tracing of facts (`ember trace`,
`ember inspect ...`). Everything reads the plain model through `ember.infer.trace_api.walk`,
which runs its modules one by one and changes nothing in it."""
