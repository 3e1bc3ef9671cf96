# The two commands of the README. Both set everything up from scratch (idempotent).
.PHONY: demo test setup
setup:
	bash scripts/setup.sh
demo: setup
	.venv/bin/aifeedback demo
test:
	bash scripts/test.sh
