# The two commands of the README. Both set everything up from scratch (idempotent).
.PHONY: demo test
demo:
	bash scripts/setup.sh demo
	.venv/bin/aifeedback demo
test:
	bash scripts/test.sh
