//! (De)serialisation of both resources from YAML, with defaults.

use gearfleet_crd::{
    DurationString, Job, JobPhase, JobSpec, JobStatus, Priority, ScalingPolicyType, SelectPolicy, WorkerPool,
    WorkerPoolPhase, WorkerPoolSpec, pool_condition,
};
use kube::{Resource, ResourceExt};

const POOL_MINIMAL: &str = r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: tiny
  namespace: default
spec:
  template:
    spec:
      containers:
        - name: worker
          image: example/worker:1
  functions:
    - name: echo
"#;

const POOL_FULL: &str = r#"
apiVersion: gearfleet.dev/v1alpha1
kind: WorkerPool
metadata:
  name: media
  namespace: jobs
spec:
  template:
    metadata:
      labels:
        team: media
    spec:
      containers:
        - name: worker
          image: example/media-worker:2.1
          resources:
            requests:
              cpu: 250m
              memory: 256Mi
            limits:
              cpu: 1
  functions:
    - name: image.resize
      minReplicas: 1
      maxReplicas: 20
      targetJobsPerWorker: 4
      activationThreshold: 2
      timeout: 1m30s
      retries:
        limit: 3
        backoff:
          initial: 500ms
          max: 1m
    - name: video_transcode
      maxReplicas: 4
      timeout: 2h
      template:
        spec:
          nodeSelector:
            gpu: "true"
          containers:
            - name: worker
              image: example/transcoder:5
  maxReplicas: 30
  scaling:
    pollInterval: 2s
    cooldown: 5m
    drainTimeout: 15m
    scaleUp:
      policies:
        - type: Pods
          value: 4
          period: 15s
        - type: Percent
          value: 100
          period: 15s
      selectPolicy: Max
    scaleDown:
      stabilizationWindow: 5m
      policies:
        - type: Percent
          value: 50
          period: 1m
      selectPolicy: Min
  recycle:
    maxAge: 24h
    maxJobs: 10000
    schedule: "0 3 * * *"
    timeZone: Europe/Berlin
    maxUnavailable: 2
  paused: false
  crashLoopLimit: 3
status:
  observedGeneration: 4
  replicas: 5
  readyReplicas: 5
  queued: 12
  running: 6
  phase: Scaling
  message: scaling image.resize from 3 to 4
  lastRecycleTime: "2025-01-02T03:00:00Z"
  conditions:
    - type: Ready
      status: "False"
      reason: Scaling
      message: image.resize is scaling up
      lastTransitionTime: "2025-01-02T03:04:05Z"
      observedGeneration: 4
  functions:
    - name: image.resize
      deployment: media-image-resize-1a2b3c4d
      replicas: 3
      readyReplicas: 3
      desiredReplicas: 4
      busyWorkers: 3
      idleWorkers: 0
      crashLooping: 0
      queued: 12
      running: 3
      lastScaleTime: "2025-01-02T03:04:05Z"
      lastScaleReason: queue depth 15 needs 4 workers
"#;

const JOB_MINIMAL: &str = r#"
apiVersion: gearfleet.dev/v1alpha1
kind: Job
metadata:
  name: hello
spec:
  function: reverse
"#;

const JOB_FULL: &str = r#"
apiVersion: gearfleet.dev/v1alpha1
kind: Job
metadata:
  name: thumbnail-42
  namespace: jobs
spec:
  function: image.resize
  payloadFrom:
    configMapKeyRef:
      name: job-input
      key: request.json
  unique: thumbnail-42
  priority: High
  runAt: "2030-01-01T00:00:00Z"
  timeout: 5m
  retries:
    limit: 2
    backoff:
      initial: 2s
      max: 1m
  next: [image.watermark, upload]
  ttlSecondsAfterFinished: 3600
status:
  observedGeneration: 1
  phase: Running
  attempts: 1
  handle: "H:broker-0:17"
  unique: thumbnail-42
  progress:
    numerator: 3
    denominator: 4
    percent: 75
  warnings: [slow disk]
  data: "chunk1chunk2"
  startTime: "2030-01-01T00:00:01Z"
  nextAttemptTime: "2030-01-01T00:00:03Z"
  currentStep: 1
  steps:
    - function: image.resize
      phase: Succeeded
      attempts: 1
      startTime: "2030-01-01T00:00:01Z"
      completionTime: "2030-01-01T00:00:02Z"
    - function: image.watermark
      phase: Running
      attempts: 1
      startTime: "2030-01-01T00:00:02Z"
  conditions:
    - type: Complete
      status: "False"
      reason: Running
      message: ""
      lastTransitionTime: "2030-01-01T00:00:01Z"
"#;

/// YAML -> typed -> JSON -> typed must be lossless.
fn round_trip<T>(yaml: &str) -> T
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    let parsed: T = serde_yaml::from_str(yaml).expect("parse YAML");
    let json = serde_json::to_value(&parsed).expect("serialize");
    let again: T = serde_json::from_value(json.clone()).expect("re-parse");
    assert_eq!(parsed, again);
    // Serialising again gives the same JSON (stable output for server-side apply).
    assert_eq!(serde_json::to_value(&again).unwrap(), json);
    parsed
}

#[test]
fn workerpool_minimal_gets_defaults() {
    let pool: WorkerPool = round_trip(POOL_MINIMAL);
    assert_eq!(pool.name_any(), "tiny");
    assert!(pool.status.is_none());
    let spec = &pool.spec;
    spec.validate().unwrap();
    let f = &spec.functions[0];
    assert_eq!(f.name, "echo");
    assert_eq!(f.min_replicas, 0);
    assert_eq!(f.max_replicas, 10);
    assert_eq!(f.target_jobs_per_worker, 1);
    assert_eq!(f.activation_threshold, 0);
    assert!(f.timeout.is_none() && f.template.is_none() && f.retries.is_none());
    assert_eq!(spec.max_replicas, None);
    assert_eq!(spec.scaling.poll_interval.as_str(), "5s");
    assert_eq!(spec.scaling.cooldown.as_str(), "60s");
    assert_eq!(spec.scaling.drain_timeout.as_str(), "10m");
    assert_eq!(spec.scaling.poll_interval(), std::time::Duration::from_secs(5));
    assert!(spec.scaling.scale_up.is_none() && spec.scaling.scale_down.is_none());
    assert_eq!(spec.scaling.scale_down_rules().stabilization_window(), std::time::Duration::from_secs(60));
    assert_eq!(spec.scaling.scale_up_rules().stabilization_window(), std::time::Duration::ZERO);
    assert!(spec.recycle.is_none());
    assert!(!spec.paused);
    assert_eq!(spec.crash_loop_limit, None);
    assert!(spec.pod_template(f).is_some());
    assert_eq!(pool.deployment_name("echo"), "tiny-echo");

    // Defaults are written out on serialisation, optional fields are not.
    let json = serde_json::to_value(&pool).unwrap();
    assert_eq!(json["spec"]["functions"][0]["maxReplicas"], 10);
    assert_eq!(json["spec"]["scaling"]["pollInterval"], "5s");
    assert_eq!(json["spec"]["paused"], false);
    assert!(json["spec"].get("recycle").is_none());
    assert!(json["spec"].get("maxReplicas").is_none());
    assert!(json.get("status").is_none());
}

#[test]
fn workerpool_full() {
    let pool: WorkerPool = round_trip(POOL_FULL);
    assert_eq!(pool.namespace().as_deref(), Some("jobs"));
    let spec = &pool.spec;
    spec.validate().unwrap();
    assert_eq!(spec.functions.len(), 2);
    let resize = spec.function("image.resize").unwrap();
    assert_eq!(resize.target_jobs_per_worker, 4);
    assert_eq!(resize.timeout(), Some(std::time::Duration::from_secs(90)));
    let retries = resize.retries.as_ref().unwrap();
    assert_eq!(retries.limit, 3);
    assert_eq!(retries.backoff.initial, DurationString::from("500ms"));
    let transcode = spec.function("video_transcode").unwrap();
    assert_eq!(transcode.min_replicas, 0);
    // The function's own template wins over the pool template.
    let t = spec.pod_template(transcode).unwrap();
    assert_eq!(t.spec.as_ref().unwrap().containers[0].image.as_deref(), Some("example/transcoder:5"));
    let t = spec.pod_template(resize).unwrap();
    assert_eq!(t.spec.as_ref().unwrap().containers[0].image.as_deref(), Some("example/media-worker:2.1"));
    assert_eq!(spec.max_replicas, Some(30));
    let up = spec.scaling.scale_up_rules();
    assert_eq!(up.policies.len(), 2);
    assert_eq!(up.policies[1].type_, ScalingPolicyType::Percent);
    assert_eq!(up.select_policy, SelectPolicy::Max);
    let down = spec.scaling.scale_down.as_ref().unwrap();
    assert_eq!(down.select_policy, SelectPolicy::Min);
    let recycle = spec.recycle.as_ref().unwrap();
    assert_eq!(recycle.schedule.as_deref(), Some("0 3 * * *"));
    assert_eq!(recycle.max_unavailable, 2);
    assert_eq!(spec.crash_loop_limit, Some(3));

    let status = pool.status.as_ref().unwrap();
    assert_eq!(status.phase, Some(WorkerPoolPhase::Scaling));
    assert_eq!(status.queued, 12);
    assert!(!gearfleet_crd::is_condition_true(&status.conditions, pool_condition::READY));
    let fs = pool.function_status("image.resize").unwrap();
    assert_eq!(fs.desired_replicas, 4);
    assert!(pool.function_status("video_transcode").is_none());

    // Quantities written as numbers survive (int-or-string).
    let json = serde_json::to_value(&pool).unwrap();
    assert_eq!(json["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"], "1");
}

#[test]
fn job_minimal_gets_defaults() {
    let job: Job = round_trip(JOB_MINIMAL);
    let spec = &job.spec;
    spec.validate().unwrap();
    assert_eq!(spec.function, "reverse");
    assert_eq!(spec.payload, None);
    assert_eq!(spec.priority, Priority::Normal);
    assert!(spec.next.is_empty());
    assert_eq!(spec.retry_policy().limit, 0);
    assert_eq!(spec.retry_policy().backoff.initial.as_str(), "1s");
    assert_eq!(spec.retry_policy().backoff.max.as_str(), "5m");
    assert_eq!(spec.step_count(), 1);
    let json = serde_json::to_value(&job).unwrap();
    assert_eq!(json["spec"]["priority"], "Normal");
    assert!(json["spec"].get("next").is_none());
    assert!(json["spec"].get("payload").is_none());
}

#[test]
fn job_full() {
    let job: Job = round_trip(JOB_FULL);
    let spec = &job.spec;
    spec.validate().unwrap();
    assert_eq!(spec.priority, Priority::High);
    assert_eq!(spec.payload_from.as_ref().unwrap().config_map_key_ref.as_ref().unwrap().key, "request.json");
    assert_eq!(spec.steps().collect::<Vec<_>>(), ["image.resize", "image.watermark", "upload"]);
    assert_eq!(spec.ttl_seconds_after_finished, Some(3600));
    assert!(spec.run_at.is_some());
    let status = job.status.as_ref().unwrap();
    assert_eq!(status.phase, JobPhase::Running);
    assert!(!status.is_finished());
    assert_eq!(status.progress.as_ref().unwrap().percent, 75);
    assert_eq!(status.steps.len(), 2);
    assert_eq!(status.steps[0].phase, JobPhase::Succeeded);
    assert_eq!(status.current_step, 1);
}

#[test]
fn job_spec_builders() {
    let spec = JobSpec::new("reverse").with_payload("hello");
    spec.validate().unwrap();
    let job = Job::new("j", spec);
    assert_eq!(Job::api_version(&()), "gearfleet.dev/v1alpha1");
    assert_eq!(Job::kind(&()), "Job");
    assert_eq!(Job::plural(&()), "jobs");
    let json = serde_json::to_value(&job).unwrap();
    assert_eq!(json["apiVersion"], "gearfleet.dev/v1alpha1");
    assert_eq!(json["kind"], "Job");
    assert_eq!(json["spec"]["payload"], "hello");
}

#[test]
fn empty_status_deserializes() {
    let s: JobStatus = serde_json::from_str("{}").unwrap();
    assert_eq!(s.phase, JobPhase::Pending);
    let s: gearfleet_crd::WorkerPoolStatus = serde_json::from_str("{}").unwrap();
    assert_eq!(s.replicas, 0);
    assert!(s.functions.is_empty());
}

#[test]
fn pool_spec_builder() {
    let spec = WorkerPoolSpec::new(Default::default(), vec![gearfleet_crd::FunctionSpec::new("echo")]);
    spec.validate().unwrap();
    let pool = WorkerPool::new("demo", spec);
    assert_eq!(WorkerPool::plural(&()), "workerpools");
    assert_eq!(pool.deployment_name("Echo").len(), "demo-echo-".len() + 8);
}

#[test]
fn unknown_enum_values_are_rejected() {
    let bad = JOB_MINIMAL.replace("function: reverse", "function: reverse\n  priority: Urgent");
    assert!(serde_yaml::from_str::<Job>(&bad).is_err());
}
