"""kic submit, kic schedule and kic compile: the pipeline on Kubeflow
Pipelines or Vertex AI, sent once, on a cron schedule, or compiled to YAML."""

from __future__ import annotations

import argparse
import os

from kic.cli import options
from kic.cli.output import warn
from kic.errors import ParameterError

CLUSTER_DATA_HELP = ("training images: gs:// or s3:// prefix, manifest or tfds:NAME (a path is read inside the "
                     "pipeline's containers)")
_KUBEFLOW_ONLY = ("host", "namespace", "experiment", "token_file", "cookies")
_VERTEX_ONLY = ("project", "region", "api_endpoint")


def add_commands(commands) -> None:
    submit = commands.add_parser("submit", help="run the pipeline once on Kubeflow Pipelines or Vertex AI")
    options.add_parameter_options(submit, data_help=CLUSTER_DATA_HELP)
    submit.add_argument("--name", default="", help="the run's display name (default: the pipeline's name and "
                                                   "the time)")
    _add_target_options(submit)
    submit.set_defaults(handler=_submit, remember_secrets=_remember_secrets)

    schedule = commands.add_parser("schedule", help="run the pipeline on a cron schedule on Kubeflow Pipelines or "
                                                    "Vertex AI (one run at a time, no catch-up)")
    schedule.add_argument("--cron", required=True, metavar="EXPR",
                          help="Kubeflow Pipelines: 6 fields, seconds first ('0 0 3 * * *': daily at 03:00); "
                               "Vertex AI: 5 fields, optionally after TZ=AREA/CITY ('TZ=Europe/Amsterdam 0 3 * * *')")
    options.add_parameter_options(schedule, data_help=CLUSTER_DATA_HELP)
    schedule.add_argument("--name", default="", help="the schedule's display name (default: the pipeline's name "
                                                     "and the cron)")
    _add_target_options(schedule)
    schedule.set_defaults(handler=_schedule, remember_secrets=_remember_secrets)

    _add_compile_command(commands)


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    both = parser.add_argument_group("either platform")
    both.add_argument("--pipeline", default="", metavar="FILE",
                      help="a compiled pipeline to send (default: compile one for the platform now)")
    both.add_argument("--dry-run", action="store_true",
                      help="check what can be checked from here (parameters, credentials, the backend's release, "
                           "the bucket, the images), print each item's status, and send nothing")
    both.add_argument("--no-image-check", action="store_true",
                      help="send without asking the registries whether the pipeline's images exist (for "
                           "registries this machine cannot reach)")
    both.add_argument("--pipeline-root", default="", metavar="URI",
                      help="where the runs' artifacts go (Vertex AI: required, gs://; Kubeflow Pipelines: default "
                           "the deployment's)")
    both.add_argument("--service-account", default="",
                      help="the account the run acts as (Kubernetes on Kubeflow Pipelines, Google Cloud on Vertex AI)")
    both.add_argument("--token", default="", help="a bearer token (Vertex AI: an OAuth access token, e.g. "
                                                  "$(gcloud auth print-access-token); default: application default "
                                                  "credentials)")
    kfp = parser.add_argument_group("Kubeflow Pipelines (the default platform)")
    kfp.add_argument("--host", default="", metavar="URL", help="the API's URL (default: $KF_PIPELINES_ENDPOINT)")
    kfp.add_argument("--namespace", default="", help="the profile namespace of a multi-user deployment")
    kfp.add_argument("--experiment", default="", help="the experiment (default: $KF_PIPELINES_DEFAULT_EXPERIMENT_NAME "
                                                      "or Default)")
    kfp.add_argument("--token-file", default="", metavar="FILE",
                     help="a file holding the bearer token, re-read on each request (a projected service-account "
                          "token)")
    kfp.add_argument("--cookies", default="", help="a Cookie header for the deployment's auth proxy, e.g. "
                                                   "'authservice_session=...'")
    vertex = parser.add_argument_group("Vertex AI (pip install 'kic[vertex]')")
    vertex.add_argument("--vertex", action="store_true", help="send to Vertex AI Pipelines")
    vertex.add_argument("--project", default="", help="the Google Cloud project")
    vertex.add_argument("--region", default="", help="the Vertex AI region, e.g. us-central1")
    vertex.add_argument("--api-endpoint", default="", metavar="HOST",
                        help="the Vertex AI API endpoint (default: REGION-aiplatform.googleapis.com)")


def _add_compile_command(commands) -> None:
    compile_ = commands.add_parser(
        "compile", help="compile the training and tuning pipelines for Kubeflow Pipelines (pipeline.yaml, "
                        "tuning-pipeline.yaml) and Vertex AI (pipeline-vertex.yaml, tuning-pipeline-vertex.yaml), "
                        "and the component YAML files")
    compile_.add_argument("--target", choices=("kfp", "vertex"), default="",
                          help="only this target's pipelines (default: both, and the components); vertex needs "
                               "the optional extra: pip install kic[vertex]")
    compile_.add_argument("--output", default="", help="where the pipeline goes (default: pipeline.yaml for kfp, "
                                                       "pipeline-vertex.yaml for vertex); needs --target, and "
                                                       "writes only the training pipeline unless --tuning")
    compile_.add_argument("--tuning", action="store_true", help="with --output: the tuning pipeline")
    compile_.add_argument("--parallelism", type=int, default=0, metavar="P",
                          help="how many trials the tuning pipeline runs at once (default: 4)")
    compile_.add_argument("--image-cpu", default="", help="image of every step but train (default: "
                                                          "ghcr.io/kic-project/kic-cpu:<version>)")
    compile_.add_argument("--image-gpu", default="", help="image of train (default: "
                                                          "ghcr.io/kic-project/kic-gpu:<version>)")
    compile_.add_argument("--image", default="", help="one image for every step (--image-cpu/--image-gpu win)")
    compile_.add_argument("--gpu-node-selector", action="append", default=[], metavar="KEY=VALUE",
                          help="kfp: a node label train's pod must match (a GPU node pool), e.g. "
                               "cloud.google.com/gke-accelerator=nvidia-l4 (repeatable)")
    compile_.add_argument("--gpu-toleration", action="append", default=[], metavar="KEY[=VALUE]:EFFECT",
                          help="kfp: a taint train's pod tolerates, e.g. nvidia.com/gpu=present:NoSchedule "
                               "(repeatable)")
    compile_.add_argument("--no-step-timeouts", action="store_true",
                          help="kfp: no pod deadlines for prepare (6 h) and train (72 h): Kubeflow Pipelines 2.0.x "
                               "fails a step that has one")
    compile_.add_argument("--gcs-credentials-secret", default="", metavar="NAME",
                          help="kfp: a Kubernetes secret holding a service-account key.json, mounted into every "
                               "step for gs:// access from a cluster outside Google Cloud")
    compile_.add_argument("--s3-credentials-secret", default="", metavar="NAME",
                          help="kfp: a Kubernetes secret holding an S3 access key pair, set as every step's "
                               "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3:// access; Kubeflow Pipelines' "
                               "own store: mlpipeline-minio-artifact (with --s3-endpoint "
                               "http://minio-service.kubeflow:9000, or http://seaweedfs.kubeflow:9000 from 2.16); "
                               "train's checkpoints under the default minio:// root need none of it")
    compile_.add_argument("--s3-secret-keys", default="accesskey,secretkey", metavar="ACCESS_KEY,SECRET_KEY",
                          help="kfp: the names of the access key id's and the secret key's entries in "
                               "--s3-credentials-secret (default: accesskey,secretkey, as in Kubeflow Pipelines' "
                               "MinIO secret)")
    compile_.add_argument("--s3-endpoint", default="", metavar="URL",
                          help="kfp: every step's AWS_ENDPOINT_URL_S3, the S3 API of MinIO or another S3-compatible "
                               "store (default: AWS's own)")
    machines = compile_.add_argument_group(
        "train's machines, compiled into the pipeline (what each platform honours; kic submit compiles what "
        "--param sets)")
    machines.add_argument("--accelerator-count", type=int, default=None, metavar="N",
                          help="GPUs of train and of each tuning trial (default: 1; 0: the CPU)")
    machines.add_argument("--accelerator-type", default=None, metavar="TYPE",
                          help="needs --target: kfp the extended resource (default: nvidia.com/gpu), vertex an "
                               "accelerator type (default: NVIDIA_L4)")
    machines.add_argument("--train-replicas", type=int, default=None, metavar="M",
                          help="vertex: machines of train's CustomJob (default: 1)")
    machines.add_argument("--train-machine-type", default=None, metavar="TYPE",
                          help="vertex: their machine type (default: the smallest that carries the GPUs)")
    machines.add_argument("--train-machines-at-run-time", action="store_true",
                          help="vertex: accelerator_type, accelerator_count, train_replica_count and "
                               "train_machine_type as run parameters instead, through a step that computes the "
                               "CustomJob's worker pools at run time (unverified on Vertex AI)")
    compile_.add_argument("--no-components", action="store_true", help="only write the pipeline")
    compile_.set_defaults(handler=_compile)


# ------------------------------------------------------ submit, schedule
def _remember_secrets(args: argparse.Namespace) -> None:
    """What submit's and schedule's output must never show: the credentials given, and the hosts' URLs (which
    may carry them)."""
    from kic import redact

    redact.remember(args.token, args.cookies, _read_quietly(args.token_file),
                    urls=(args.host, os.environ.get("KF_PIPELINES_ENDPOINT", "")))


def _submit(args: argparse.Namespace) -> int:
    from kic.orchestration import remote

    target, misplaced = _target(args)
    layers, malformed = options.parameter_layers(args)
    if args.dry_run:
        return _dry_run(target, layers, malformed + misplaced, args)
    print(f"kic: checking the parameters, the platform and the images, then sending the pipeline to "
          f"{target.platform}", flush=True)
    run = remote.submit(target, layers, problems=malformed + misplaced, pipeline=args.pipeline, name=args.name,
                        warn=warn, check_images=not args.no_image_check)
    print(f"kic: started run {run.id} on {target.platform}\n{run.url}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from kic.orchestration import remote

    target, misplaced = _target(args)
    layers, malformed = options.parameter_layers(args)
    if args.dry_run:
        return _dry_run(target, layers, malformed + misplaced, args, cron_expression=args.cron)
    print(f"kic: checking the parameters, the platform and the images, then sending the schedule to "
          f"{target.platform}", flush=True)
    schedule = remote.schedule(target, layers, args.cron, problems=malformed + misplaced, pipeline=args.pipeline,
                               name=args.name, warn=warn, check_images=not args.no_image_check)
    print(f"kic: created schedule {schedule.id} on {target.platform}: {' '.join(args.cron.split())!r}, at most one "
          f"run at a time, missed runs skipped\n{schedule.url}")
    return 0


def _dry_run(target, layers, problems, args: argparse.Namespace, cron_expression: str | None = None) -> int:
    """Prints every check and its status; 1 when one failed. Nothing is sent."""
    from kic.orchestration import preflight, remote

    print(f"kic: checking what a run on {target.platform} needs, sending nothing", flush=True)
    checks = remote.dry_run(target, layers, problems=problems, pipeline=args.pipeline,
                            cron_expression=cron_expression, warn=warn, check_images=not args.no_image_check)
    for check in checks:
        print(check.line())
    failed = preflight.failures(checks)
    print(f"kic: {len(failed)} of {len(checks)} checks failed; nothing was sent" if failed else
          f"kic: nothing failed of what can be checked from here ({len(checks)} checks); nothing was sent")
    return 1 if failed else 0


def _target(args: argparse.Namespace):
    """The platform the options name, and a problem for each option of the other platform."""
    from kic.errors import Problem
    from kic.orchestration.kubeflow import KubeflowTarget
    from kic.orchestration.vertex import VertexTarget

    def misplaced(names: tuple[str, ...], platform: str) -> list[Problem]:
        return [Problem("--" + name.replace("_", "-"), getattr(args, name), f"only for {platform}")
                for name in names if getattr(args, name)]

    both = {"pipeline_root": args.pipeline_root, "service_account": args.service_account, "token": args.token}
    if args.vertex:
        return (VertexTarget(project=args.project, region=args.region, api_endpoint=args.api_endpoint, **both),
                misplaced(_KUBEFLOW_ONLY, "Kubeflow Pipelines"))
    return (KubeflowTarget(host=args.host, namespace=args.namespace, experiment=args.experiment,
                           token_file=args.token_file, cookies=args.cookies, **both),
            misplaced(_VERTEX_ONLY, "Vertex AI (--vertex)"))


def _read_quietly(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, ValueError):  # no file given, or none there: kic submit says so in its checks
        return ""


# --------------------------------------------------------------- compile
def _compile(args: argparse.Namespace) -> int:
    from kic.errors import Problem
    from kic.pipelines.placement import TARGETS, ClusterOptions, Toleration

    # Read when the components are imported, in compile_pipeline below.
    images = {"KIC_IMAGE_CPU": args.image_cpu or args.image, "KIC_IMAGE_GPU": args.image_gpu or args.image}
    for variable, image in images.items():
        if image:
            os.environ[variable] = image
    problems = []
    if args.output and not args.target:
        problems.append(Problem("--output", args.output, "needs --target: one pipeline per file"))
    if args.tuning and not args.output:
        problems.append(Problem("--tuning", True, "only with --output (without it, both pipelines are written)"))
    if args.parallelism < 0:
        problems.append(Problem("--parallelism", args.parallelism, "1 or more trials at once"))
    selector = {}
    for pair in args.gpu_node_selector:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            problems.append(Problem("--gpu-node-selector", pair, "expected KEY=VALUE"))
        selector[key] = value
    tolerations = []
    for text in args.gpu_toleration:
        try:
            tolerations.append(Toleration.parse(text))
        except ValueError as error:
            problems.append(Problem("--gpu-toleration", text, str(error)))
    s3_secret_keys = tuple(key.strip() for key in args.s3_secret_keys.split(","))
    if len(s3_secret_keys) != 2 or not all(s3_secret_keys):
        problems.append(Problem("--s3-secret-keys", args.s3_secret_keys, "ACCESS_KEY,SECRET_KEY: two entry names"))
    if args.s3_endpoint and not args.s3_endpoint.startswith(("http://", "https://")):
        problems.append(Problem("--s3-endpoint", args.s3_endpoint, "a URL, as in http://minio-service.kubeflow:9000"))
    kubernetes_options = dict(gpu_node_selector=selector, gpu_tolerations=tuple(tolerations),
                              gcs_credentials_secret=args.gcs_credentials_secret,
                              s3_credentials_secret=args.s3_credentials_secret, s3_endpoint=args.s3_endpoint,
                              **({"s3_secret_keys": s3_secret_keys} if len(s3_secret_keys) == 2 else {}),
                              step_timeouts=not args.no_step_timeouts)
    targets = [args.target] if args.target else list(TARGETS)
    if (selector or tolerations or args.gcs_credentials_secret or args.s3_credentials_secret or args.s3_endpoint
            or args.no_step_timeouts) and targets != ["kfp"]:
        problems.append(Problem("--target", args.target or "(both)", "node selectors, tolerations, credential "
                                                                     "secrets and step timeouts are Kubernetes "
                                                                     "settings: --target kfp"))
    machine_options = _compiled_machines(args, targets, problems)
    if problems:
        raise ParameterError(problems)
    from kic.orchestration import compile as kic_compile

    for target in targets:  # nothing is written when a target cannot be compiled here
        kic_compile.require(target)
    clusters = {target: ClusterOptions(target=target, **(kubernetes_options if target == "kfp" else {}),
                                       **machine_options.get(target, {}))
                for target in targets}  # every value checked before anything is written
    for target in targets:
        cluster = clusters[target]
        if not (args.output and args.tuning):
            path = args.output or kic_compile.PIPELINE_YAMLS[target]
            print(f"wrote {kic_compile.compile_pipeline(path, target, cluster)}")
        if args.tuning or not args.output:
            path = args.output or kic_compile.TUNING_PIPELINE_YAMLS[target]
            print(f"wrote {kic_compile.compile_tuning_pipeline(path, target, cluster, args.parallelism or None)}")
    if not args.no_components:
        for path in kic_compile.compile_components():
            print(f"wrote {path}")
    return 0


def _compiled_machines(args: argparse.Namespace, targets: list[str], problems: list) -> dict[str, dict]:
    """kic compile's options for train's machines, as ClusterOptions fields per target; what does not fit the
    targets is added to ``problems``."""
    from kic.errors import Problem

    vertex_only = {"--train-replicas": args.train_replicas, "--train-machine-type": args.train_machine_type,
                   "--train-machines-at-run-time": args.train_machines_at_run_time or None}
    for flag, value in vertex_only.items():
        if value is not None and targets != ["vertex"]:
            problems.append(Problem(flag, value, "train's CustomJob is Vertex AI's: needs --target vertex"))
    if args.accelerator_type is not None and len(targets) != 1:
        problems.append(Problem("--accelerator-type", args.accelerator_type, "each platform names GPUs its own "
                                                                            "way: needs --target"))
    fields = {"accelerator_type": args.accelerator_type, "accelerator_count": args.accelerator_count}
    if args.train_machines_at_run_time and any(value is not None for value in
                                               (*fields.values(), args.train_replicas, args.train_machine_type)):
        problems.append(Problem("--train-machines-at-run-time", True, "train's machines are then run parameters: "
                                                                      "no other option of train's machines"))
    vertex = {**fields, "train_replica_count": args.train_replicas, "train_machine_type": args.train_machine_type,
              "train_machines_at_run_time": args.train_machines_at_run_time}
    machine_options = {"kfp": fields, "vertex": vertex}
    return {target: {name: value for name, value in machine_options[target].items()
                     if value is not None and value is not False}
            for target in targets}
