# The two commands of the README, and the checks CI runs.
.PHONY: up test lint bench ci

up:     ## build and start Ballast on 127.0.0.1:2379
	scripts/up.sh

test:   ## install what is missing, build, run every test
	scripts/test.sh

lint:   ## formatting and clippy, warnings are errors
	cargo fmt --all -- --check
	eval "$$(scripts/setup.sh)" && cargo clippy --workspace --all-targets --locked -- -D warnings

bench:  ## criterion micro-benchmarks of the engine (release)
	eval "$$(scripts/setup.sh)" && cargo bench -p ballast-benches

ci: test lint
