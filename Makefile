# The two commands of the README, and the checks CI runs.
.PHONY: up test lint bench bench-compare ci

up:     ## build and start Ballast on 127.0.0.1:2379
	scripts/up.sh

test:   ## install what is missing, build, run every test
	scripts/test.sh

lint:   ## formatting and clippy, warnings are errors
	cargo fmt --all -- --check
	eval "$$(scripts/setup.sh)" && cargo clippy --workspace --all-targets --locked -- -D warnings

bench:  ## criterion micro-benchmarks of the engine (release)
	eval "$$(scripts/setup.sh)" && cargo bench -p ballast-benches

bench-compare:  ## Ballast against etcd 3.4, three members each, same disk; writes docs/benchmarks.md
	scripts/bench-compare.sh

ci: test lint
