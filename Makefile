# Developer shortcuts. `./run.sh` and `./test.sh` (the README's two commands) install what they need first;
# these targets assume the .venv that either of them made.
.PHONY: run test test-unit test-e2e lint format typecheck bench
PY := .venv/bin/python

run:
	./run.sh
test:              # lint, type check and the whole suite, as CI runs it
	./test.sh
test-unit:         # the fast layer: no servers, no subprocesses (about a minute)
	./test.sh -m unit
test-e2e:
	./test.sh -m e2e
lint:
	$(PY) -m ruff check filterproxy tests bench addons
	$(PY) -m ruff format --check filterproxy tests bench addons
format:
	$(PY) -m ruff check --fix filterproxy tests bench addons
	$(PY) -m ruff format filterproxy tests bench addons
typecheck:
	$(PY) -m mypy
bench:
	./bench.sh all
