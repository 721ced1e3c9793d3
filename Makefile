# Thin wrapper over scripts/bootstrap + CMake presets. `make demo`, `make test`, `make bench`.
PRESET ?= default
BUILD  := build
JOBS   ?= 2

.PHONY: all bootstrap build demo test bench clean

all: build

bootstrap:
	@scripts/bootstrap

$(BUILD)/build.ninja: CMakeLists.txt CMakePresets.json | bootstrap
	@cmake --preset $(PRESET) >/dev/null

build: bootstrap $(BUILD)/build.ninja
	@cmake --build --preset $(PRESET) -j $(JOBS)

demo: build
	$(BUILD)/app/cohort demo

test: build
	ctest --preset $(PRESET) -j $(JOBS)

bench: build
	$(BUILD)/app/cohort bench

clean:
	rm -rf $(BUILD)
