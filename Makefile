# Thin wrapper over infra/install-deps.sh, CMake and CTest.
#   make demo   install, build, train the example CNN on Fashion-MNIST
#   make test   install, build, run every test
#   make asan   the unit tests again under AddressSanitizer + UBSan (torch-free ones)
#   make bench  install, build, run every benchmark and rewrite BENCHMARKS.md
#               (BENCH_FLAGS=--quick for a pipeline check)
BUILD ?= build
ASAN_BUILD ?= build-asan
JOBS ?= $(shell nproc)

.PHONY: all deps configure build test demo bench asan format clean

all: build

deps:
	infra/install-deps.sh

configure: deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# One ctest job per core; the tests say how many cores they need
# (tests/CMakeLists.txt: PROCESSORS, RUN_SERIAL).
test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 900 -j $(JOBS)

demo: build
	infra/demo.sh $(BUILD)

bench: build
	bench/run --build $(BUILD) $(BENCH_FLAGS)

# The unit tests again under ASan + UBSan: only their targets are built (no
# libtorch, no tandem binary); tests that run `tandem` use the regular build's.
asan: build
	cmake -S . -B $(ASAN_BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTANDEM_SANITIZE=ON
	cmake --build $(ASAN_BUILD) -j $(JOBS) --target asan_unit_tests
	cd $(ASAN_BUILD) && TANDEM_BIN=$(abspath $(BUILD))/bin/tandem ASAN_OPTIONS=detect_leaks=0 \
	  ctest --output-on-failure -L unit --timeout 900 -j $(JOBS)

format:
	clang-format -i $$(git ls-files '*.h' '*.cc')

clean:
	rm -rf $(BUILD) $(ASAN_BUILD)
