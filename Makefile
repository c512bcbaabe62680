# Every target creates the virtualenv it needs, so a fresh clone needs nothing by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-postgres lint bench bench-quick stress clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: $(STAMP)
	$(PY) -m csvstore

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q

# The suite again with PostgreSQL as the metadata database (every test that builds the app
# gets a database of its own, and the PostgreSQL-only tests run): a throwaway server on a
# free loopback port, fsync off, stopped and removed however pytest ends.
test-postgres: $(STAMP)
	@dir=$$(mktemp -d) && chmod 755 "$$dir" && \
	trap 'scripts/pg-test-cluster stop "$$dir/pg"; rm -rf "$$dir"' EXIT && \
	trap 'exit 130' INT TERM && \
	url=$$(scripts/pg-test-cluster start "$$dir/pg" --fast) && \
	echo "PostgreSQL test server: $$url" && \
	CSVSTORE_TEST_DATABASE_URL="$$url" $(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info

# The long runs: many more SIGKILLs of the real server under load.
stress: $(STAMP)
	CSVSTORE_KILL_ROUNDS=40 CSVSTORE_FUZZ_EXAMPLES=150 \
		$(PY) -m pytest -q -p no:cacheprovider -s tests/test_crash.py tests/test_fuzz.py
	# tuspy: 1 GiB through two forced disconnects; resumable uploads under 8 SIGKILLs
	CSVSTORE_TUS_STRESS_SIZE=1073741824 CSVSTORE_TUS_KILL_ROUNDS=8 \
		$(PY) -m pytest -q -p no:cacheprovider -s tests/test_tus.py -k "stress or sigkills"
