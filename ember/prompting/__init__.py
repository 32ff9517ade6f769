"""Prompting and test-time compute: prompt builders (prompts.py), sampling through the engine
(generate.py), strategies (strategies.py, beam.py), estimators (estimators.py), accuracy
curves against samples and tokens (curves.py), prompt sensitivity (sensitivity.py).
Verifiers (ORM/PRM) live in ember.train.verifiers (trained by `ember reward`); the generated reasoning
tasks in ember.data.reasoning_tasks."""
