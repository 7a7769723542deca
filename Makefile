# Bulkhead: the two commands of README.md, and a few more.
#   make run    build the test guests and bulkhead, then boot the default guest (hello)
#   make test   build the test guests, then run every test (KVM tests skip without /dev/kvm)
SWIFT ?= swift
GUESTS := .build/guests

.PHONY: run test guests build release bench fuzz surface clean

run: guests build
	.build/debug/bulkhead run

test: guests
	BULKHEAD_REQUIRE_GUESTS=1 $(SWIFT) test

guests:
	bash Guest/build.sh $(GUESTS)

build:
	$(SWIFT) build --product bulkhead

release:
	$(SWIFT) build -c release --product bulkhead

bench:
	python3 Benchmarks/run.py

fuzz:
	bash Fuzz/run.sh

# Regenerate the pinned attack surface after an intended change (then update docs/threat-model.md).
surface: build
	.build/debug/bulkhead surface --json > docs/attack-surface.json

clean:
	rm -rf .build
