# Two commands do all set-up on a fresh machine:
#   make run    sets up .venv (once) and runs the main benchmark on the embedded ml-100k data
#   make test   sets up .venv (once) and runs the test suite
PY := .venv/bin/python
PARADIGMS ?= all
DATASET ?= ml-100k
ARGS ?=

.PHONY: setup run smoke test perf device-check clean

setup:
	@bash scripts/setup_env.sh

run: setup
	$(PY) -m bench run --paradigms $(PARADIGMS) --dataset $(DATASET) $(ARGS)

smoke: setup
	$(PY) -m bench run --paradigms $(PARADIGMS) --dataset $(DATASET) --preset smoke $(ARGS)

# The suite in TEST_WORKERS processes (pytest-xdist), one test file per process so a module's fixtures are built
# once, and one thread per process unless OMP_NUM_THREADS says otherwise: much of the suite is single-threaded
# (Python, subprocess start-up), so 2 workers on 2 cores halve its time. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
test: setup
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile

perf: setup
	$(PY) -m pytest tests/perf -p no:cacheprovider -s --override-ini="addopts=-q"

device-check:  # on a GPU machine: CUDA tests, a timed ml-100k run, stage timings and peak GPU memory
	bash scripts/device_check.sh

clean:
	rm -rf .venv .pytest_cache
