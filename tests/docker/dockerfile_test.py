#!/usr/bin/env python3
"""What can be checked of the Dockerfile without Docker: every COPY source exists and is not
ignored, its CMake flags match the presets and CMakeLists.txt (and scripts/gpu-check's), the ports
it exposes and health-checks are the documented defaults, and the build packages come from
scripts/bootstrap (run here against stand-in dpkg-query/apt-get to see what it would install).

usage: dockerfile_test.py <source dir>
"""
import fnmatch
import json
import os
import re
import shlex
import stat
import subprocess
import sys
import tempfile
import unittest

ROOT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..")


def read(rel):
    with open(os.path.join(ROOT, rel), encoding="utf-8") as f:
        return f.read()


def instructions(text):
    """Dockerfile instructions as (KEYWORD, argument string), continuation lines joined."""
    out, cur = [], ""
    for line in text.splitlines():
        if not cur and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if cur and line.lstrip().startswith("#"):
            continue  # comment inside a continued instruction
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        cur += line
        kw, _, arg = cur.strip().partition(" ")
        out.append((kw.upper(), arg.strip()))
        cur = ""
    return out


def dockerignore_patterns():
    pats = []
    for line in read(".dockerignore").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            pats.append(line.rstrip("/"))
    return pats


def ignored(path, patterns):
    parts = path.strip("/").split("/")
    for pat in patterns:
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if fnmatch.fnmatch(prefix, pat) or fnmatch.fnmatch(prefix, pat.replace("**/", "")):
                return True
    return False


def cmake_defines(command):
    """-D flags of the first `cmake -S` configure command in a shell string."""
    m = re.search(r"cmake\s+-S\s.*?(?=&&|;|$)", command, re.S)
    assert m, "no `cmake -S` configure command in: " + command
    words = shlex.split(m.group(0).replace("\\\n", " "))
    defs = {}
    for w in words:
        if w.startswith("-D"):
            k, _, v = w[2:].partition("=")
            defs[k.split(":")[0]] = v
    gen = words[words.index("-G") + 1] if "-G" in words else None
    return defs, gen


class Dockerfile(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.text = read("Dockerfile")
        cls.ins = instructions(cls.text)
        cls.args = {}
        for kw, arg in cls.ins:
            if kw == "ARG" and "=" in arg:
                k, _, v = arg.partition("=")
                cls.args[k] = v.strip('"')

    def runs(self):
        return [a for k, a in self.ins if k == "RUN"]

    def test_every_copy_source_exists_and_is_in_the_context(self):
        pats = dockerignore_patterns()
        copies = [a for k, a in self.ins if k == "COPY" and "--from" not in a]
        self.assertTrue(copies, "no COPY from the build context")
        for arg in copies:
            srcs = shlex.split(arg)[:-1]
            for src in srcs:
                if src == ".":
                    continue
                self.assertTrue(os.path.exists(os.path.join(ROOT, src)), f"COPY source {src} missing")
                self.assertFalse(ignored(src, pats), f"COPY source {src} is excluded by .dockerignore")

    def test_context_keeps_sources_and_drops_build_folders(self):
        pats = dockerignore_patterns()
        for needed in ["CMakeLists.txt", "CMakePresets.json", "kernels/fp8_cuda_kernels.cu",
                       "grpo/model.cpp", "app/main.cpp", "scripts/bootstrap", "tests/CMakeLists.txt"]:
            self.assertFalse(ignored(needed, pats), f"{needed} would be left out of the context")
        for junk in ["build", "build-gpu/CMakeCache.txt", "runs/demo", ".git/config", "keys/node.key"]:
            self.assertTrue(ignored(junk, pats), f"{junk} would be sent in the context")

    def test_cmake_flags_match_the_presets_and_cmakelists(self):
        configure = [r for r in self.runs() if "cmake -S" in r]
        self.assertEqual(len(configure), 1, "expected one cmake configure step")
        defs, gen = cmake_defines(configure[0])
        preset = next(p for p in json.loads(read("CMakePresets.json"))["configurePresets"]
                      if p["name"] == "default")
        self.assertEqual(gen, preset["generator"])
        self.assertEqual(defs.get("CMAKE_BUILD_TYPE"), preset["cacheVariables"]["CMAKE_BUILD_TYPE"])
        self.assertEqual(defs.get("COHORT_CUDA"), "ON", "the CUDA image must require the CUDA kernels")
        cmakelists = read("CMakeLists.txt")
        declared = set(re.findall(r"option\((\w+)", cmakelists)) | set(
            re.findall(r"set\((\w+)\s+\"[^\"]*\"\s+CACHE", cmakelists))
        for name in defs:
            if name.startswith("CMAKE_") or name == "Torch_DIR":
                continue
            self.assertIn(name, declared, f"-D{name} is not an option of CMakeLists.txt")
        strings = re.search(r"COHORT_CUDA PROPERTY STRINGS ([A-Z ]+)\)", cmakelists).group(1).split()
        self.assertIn(defs["COHORT_CUDA"], strings)
        # The architectures default to CMakeLists.txt's own.
        default_arch = re.search(r"set\(CMAKE_CUDA_ARCHITECTURES ([0-9 ]+)\)", cmakelists).group(1).split()
        self.assertEqual(self.args["CUDA_ARCHITECTURES"].split(";"), default_arch)
        self.assertEqual(defs["Torch_DIR"], "/opt/libtorch/share/cmake/Torch")

    def test_gpu_check_configures_like_the_image(self):
        script = read("scripts/gpu-check")
        m = re.search(r"cmake_args=\((.*?)\)", script)
        words = shlex.split(m.group(1))
        self.assertEqual(words[words.index("-G") + 1], "Ninja")
        self.assertIn("-DCMAKE_BUILD_TYPE=Release", words)
        self.assertIn("-DCOHORT_CUDA=ON", words)

    def test_libtorch_is_pinned_to_the_image_cuda_and_checked(self):
        cuda_major_minor = "".join(self.args["CUDA_VERSION"].split(".")[:2])
        self.assertEqual(self.args["LIBTORCH_CUDA"], "cu" + cuda_major_minor,
                         "LibTorch's CUDA build must match the image's toolkit")
        self.assertIn("LIBTORCH_SHA256", self.args)
        fetch = next(r for r in self.runs() if "LIBTORCH_URL" in r)
        self.assertIn("sha256sum", fetch)
        self.assertRegex(fetch, r'"\$\{actual\}" != "\$\{LIBTORCH_SHA256\}".*exit 1')

    def test_exposed_ports_are_the_documented_defaults(self):
        exposed = set()
        for kw, arg in self.ins:
            if kw == "EXPOSE":
                exposed |= {int(p.split("/")[0]) for p in arg.split()}
        listen = re.search(r'^listen = "[^"]*:(\d+)"', read("docs/ROUND_CONFIG.md"), re.M)
        self.assertIsNotNone(listen, "docs/ROUND_CONFIG.md lost its listen default")
        self.assertIn(int(listen.group(1)), exposed, "the peer protocol port is not exposed")
        header = re.search(r'std::string listen = "[^"]*:(\d+)"', read("coordinator/round_config.h"))
        self.assertEqual(header.group(1), listen.group(1), "ROUND_CONFIG.md and round_config.h disagree")
        health = next(a for k, a in self.ins if k == "HEALTHCHECK")
        port = int(re.search(r'"127\.0\.0\.1:(\d+)"', health).group(1))
        self.assertIn(port, exposed, "the health-checked status port is not exposed")
        operator_status = re.search(r'status_listen = "[^"]*:(\d+)"', read("docs/OPERATOR.md"))
        self.assertEqual(int(operator_status.group(1)), port, "status port differs from docs/OPERATOR.md")
        self.assertIn(f'status_listen = "0.0.0.0:{port}"', read("docs/PEER.md"))

    def test_healthcheck_uses_a_real_subcommand(self):
        health = next(a for k, a in self.ins if k == "HEALTHCHECK")
        cmd = json.loads(health[health.index("CMD") + 3:].strip())
        self.assertEqual(cmd[:3], ["cohort", "coordinator", "status"])
        commands = read("coordinator/commands.cpp")
        self.assertIn('add_subcommand("status"', commands)
        self.assertIn('"--url"', commands)

    def test_runtime_runs_as_non_root_with_volumes(self):
        stages = re.split(r"^FROM ", self.text, flags=re.M)[1:]
        runtime = stages[-1]
        self.assertIn("-runtime-", runtime.splitlines()[0])
        users = re.findall(r"^USER (\S+)", runtime, re.M)
        self.assertTrue(users and users[-1] not in ("root", "0"), "runtime stage runs as root")
        vol = re.search(r'^VOLUME (\[.*\])', runtime, re.M)
        self.assertEqual(sorted(json.loads(vol.group(1))), ["/data", "/keys"])
        self.assertRegex(runtime, r'ENTRYPOINT \["cohort"\]')

    def test_build_packages_come_from_bootstrap(self):
        bootstrap_runs = [r for r in self.runs() if "scripts/bootstrap" in r]
        self.assertEqual(len(bootstrap_runs), 1)
        self.assertIn("COHORT_SKIP_TORCH=1", bootstrap_runs[0])
        packages = bootstrap_packages()
        for r in self.runs():
            m = re.search(r"apt-get install[^&;]*", r)
            if not m:
                continue
            for word in m.group(0).split()[2:]:
                if not word.startswith("-"):
                    self.assertNotIn(word, packages, f"{word} is installed outside scripts/bootstrap")


def bootstrap_packages(**env):
    """What scripts/bootstrap would install on a machine that has none of its packages, run
    against stand-ins for dpkg-query (nothing installed), apt-get (records) and sudo."""
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "apt.log")
        stubs = {
            "dpkg-query": "#!/bin/sh\nexit 1\n",
            "apt-get": f'#!/bin/sh\necho "$@" >> {log}\n',
            "sudo": '#!/bin/sh\nexec "$@"\n',
        }
        for name, body in stubs.items():
            p = os.path.join(d, name)
            with open(p, "w") as f:
                f.write(body)
            os.chmod(p, os.stat(p).st_mode | stat.S_IEXEC)
        full_env = dict(os.environ, PATH=d + os.pathsep + os.environ["PATH"], **env)
        subprocess.run(["bash", os.path.join(ROOT, "scripts/bootstrap")], env=full_env, check=True,
                       stdout=subprocess.DEVNULL)
        with open(log) as f:
            lines = f.read().splitlines()
    installs = [l.split() for l in lines if "install" in l.split()]
    assert len(installs) == 1, lines
    return {w for w in installs[0] if not w.startswith("-") and w != "install"}


class Bootstrap(unittest.TestCase):
    def test_full_list_includes_the_cpu_libtorch(self):
        pkgs = bootstrap_packages()
        self.assertIn("libtorch-dev", pkgs)
        self.assertIn("libsodium-dev", pkgs)

    def test_docker_switches_leave_out_libtorch_and_dev_tools(self):
        pkgs = bootstrap_packages(COHORT_SKIP_TORCH="1", COHORT_SKIP_DEV="1")
        self.assertNotIn("libtorch-dev", pkgs)
        self.assertNotIn("python3-cryptography", pkgs)
        for needed in ["cmake", "ninja-build", "libsodium-dev", "libprotobuf-dev", "protobuf-compiler",
                       "libopenblas-pthread-dev", "libcli11-dev", "libtomlplusplus-dev", "libicu-dev"]:
            self.assertIn(needed, pkgs)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
