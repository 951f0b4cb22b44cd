# Entry points; each target is one command a person can also run by hand.
.PHONY: test check demo lint bench bench-scale

test:  ## set up everything on a fresh machine and run the whole suite
	./scripts/test.sh

demo:  ## three simulated GPU nodes, the status page and Prometheus, no GPU needed; Ctrl-C stops
	./scripts/setup.sh demo
	.venv/bin/python -m simulator.demo $(DEMO_ARGS)

# What `make check` needs on a fresh clone (.venv with the test extras, the fake NVML), made once
# and again only when the project's dependencies or the setup change.
.venv/.ready: pyproject.toml scripts/setup.sh
	./scripts/setup.sh demo
	touch $@

check: .venv/.ready  ## seconds, no child processes: lint, type-check, the in-process unit tests
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy
	PYTHONPATH=$(CURDIR) .venv/bin/python -m pytest -m unit -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:  ## exporter vs nvitop-exporter, the status service at 10/100/1000 nodes, the page at 1000/2000
	./scripts/setup.sh demo
	.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'
	.venv/bin/python -m benchmarks.bench_exporter
	.venv/bin/python -m benchmarks.bench_status_api
	.venv/bin/python -m benchmarks.bench_page

bench-scale:  ## about 10 minutes: 2,000 simulated nodes x 8 GPUs, Prometheus and VictoriaMetrics, both modes
	./scripts/setup.sh
	.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[bench]'
	.venv/bin/python -m benchmarks.bench_scale $(BENCH_SCALE_ARGS)
