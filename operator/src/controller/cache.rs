//! The watch caches a reconcile reads from, so that its cost does not grow with the cluster:
//! the children (label-selected on `app.kubernetes.io/managed-by`), the model-server pods, and,
//! once a GPU service exists, the nodes and the pods that hold resources on them.
//!
//! Each cache is a reflector driven by a task of its own, not by the controller: a reconcile
//! may wait for a cache to fill without stalling the stream that fills it. The children's and
//! pods' watch events are forwarded to the controller as reconcile triggers.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Node, Pod, PodSpec, ResourceRequirements, Service,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ApiResource, DynamicObject, ObjectMeta};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use super::Error;
use super::child::ChildKind;
use crate::api::{Experiment, InferenceService, ShadowDeployment};
use crate::resources::labels::{COMPONENT_LABEL, FIELD_MANAGER, MANAGED_BY_LABEL};
use crate::resources::scaled_object::scaled_object_resource;

/// How long a reconcile waits for a cache it started to fill.
const FILL_TIMEOUT: Duration = Duration::from_secs(60);

/// The tasks that drive a set of reflectors; dropped, they stop.
#[derive(Default)]
pub struct Drivers(Vec<JoinHandle<()>>);

impl Drop for Drivers {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.abort();
        }
    }
}

/// Watch events of a cache, to trigger reconciles.
pub type Triggers<K> = futures::stream::BoxStream<'static, Result<K, watcher::Error>>;

/// Starts a reflector of `api` on a task of its own. Returns its store and, when `triggers` is
/// set, the stream of objects its events touched (applied, deleted, listed).
fn spawn_reflector<K>(
    drivers: &mut Drivers,
    api: Api<K>,
    config: watcher::Config,
    dyntype: K::DynamicType,
    strip: fn(&mut K),
    triggers: bool,
) -> (Store<K>, Option<Triggers<K>>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Default + Send + Sync,
{
    let writer = Writer::new(dyntype);
    let reader = writer.as_reader();
    let (tx, rx) = mpsc::unbounded_channel::<K>();
    let kind = K::kind(&K::DynamicType::default()).to_string();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(strip)
        .reflect(writer)
        .touched_objects();
    drivers.0.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                // Unbounded: the reflector must never wait for the controller, which may
                // itself wait for this cache.
                Ok(object) if triggers => {
                    if tx.send(object).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => warn!(kind, error = %e, "watch failed; retrying with backoff"),
            }
        }
    }));
    let triggers = triggers.then(|| {
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|object| (Ok(object), rx))
        })
        .boxed()
    });
    (reader, triggers)
}

/// Forwards every item of `triggers` to two streams (objects are cheap to clone: the
/// reflector's events), on a task of `drivers`.
fn split_triggers<K>(drivers: &mut Drivers, triggers: Triggers<K>) -> (Triggers<K>, Triggers<K>)
where
    K: Clone + Send + 'static,
{
    let (first_tx, first_rx) = mpsc::unbounded_channel::<K>();
    let (second_tx, second_rx) = mpsc::unbounded_channel::<K>();
    drivers.0.push(tokio::spawn(async move {
        let mut triggers = triggers;
        while let Some(item) = triggers.next().await {
            if let Ok(object) = item {
                // A consumer that stopped does not stop the other.
                let first = first_tx.send(object.clone()).is_ok();
                let second = second_tx.send(object).is_ok();
                if !first && !second {
                    return;
                }
            }
        }
    }));
    let stream = |rx: mpsc::UnboundedReceiver<K>| {
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|object| (Ok(object), rx))
        })
        .boxed()
    };
    (stream(first_rx), stream(second_rx))
}

/// Managed fields are the bulk of most objects and nothing here reads them.
fn strip_managed_fields<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// The caches of every child kind.
pub struct ChildStores {
    pub config_maps: Store<ConfigMap>,
    pub services: Store<Service>,
    pub deployments: Store<Deployment>,
    pub pdbs: Store<PodDisruptionBudget>,
    pub hpas: Store<HorizontalPodAutoscaler>,
    /// None when KEDA's CRD was not installed when the operator started.
    pub scaled_objects: Option<Store<DynamicObject>>,
    /// The model-server pods (`lexserve.io/component=model-server`).
    pub pods: Store<Pod>,
}

/// The trigger streams of [`ChildStores`], for the controller.
pub struct ChildTriggers {
    pub config_maps: Triggers<ConfigMap>,
    pub services: Triggers<Service>,
    pub deployments: Triggers<Deployment>,
    pub pdbs: Triggers<PodDisruptionBudget>,
    pub hpas: Triggers<HorizontalPodAutoscaler>,
    pub scaled_objects: Option<Triggers<DynamicObject>>,
    pub pods: Triggers<Pod>,
}

/// What the orphan sweep needs of a cached child.
#[derive(Clone, Debug, PartialEq)]
pub struct CachedChild {
    pub kind: ChildKind,
    pub meta: ObjectMeta,
}

impl ChildStores {
    /// Starts the child and pod caches (in `namespace`, or everywhere). `keda` says whether
    /// the ScaledObject CRD is served.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        keda: bool,
    ) -> (Self, ChildTriggers, Drivers) {
        // Only our children are watched (and cached): a label selector keeps the operator's
        // memory independent of everything else in the cluster.
        let owned =
            watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
        let model_pods =
            watcher::Config::default().labels(&format!("{COMPONENT_LABEL}=model-server"));
        let mut drivers = Drivers::default();
        macro_rules! typed {
            ($k:ty, $config:expr) => {{
                let (store, triggers) = spawn_reflector(
                    &mut drivers,
                    scoped::<$k>(client, namespace),
                    $config,
                    (),
                    strip_managed_fields::<$k>,
                    true,
                );
                (store, triggers.expect("triggers requested"))
            }};
        }
        let (config_maps, config_map_triggers) = typed!(ConfigMap, owned.clone());
        let (services, service_triggers) = typed!(Service, owned.clone());
        let (deployments, deployment_triggers) = typed!(Deployment, owned.clone());
        let (pdbs, pdb_triggers) = typed!(PodDisruptionBudget, owned.clone());
        let (hpas, hpa_triggers) = typed!(HorizontalPodAutoscaler, owned.clone());
        let (pods, pod_triggers) = typed!(Pod, model_pods);
        let (scaled_objects, scaled_object_triggers) = if keda {
            let resource = scaled_object_resource();
            let api: Api<DynamicObject> = match namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            let (store, triggers) = spawn_dynamic_reflector(&mut drivers, api, owned, resource);
            (Some(store), Some(triggers))
        } else {
            (None, None)
        };
        (
            Self {
                config_maps,
                services,
                deployments,
                pdbs,
                hpas,
                scaled_objects,
                pods,
            },
            ChildTriggers {
                config_maps: config_map_triggers,
                services: service_triggers,
                deployments: deployment_triggers,
                pdbs: pdb_triggers,
                hpas: hpa_triggers,
                scaled_objects: scaled_object_triggers,
                pods: pod_triggers,
            },
            drivers,
        )
    }

    /// Waits until every cache holds its first full list.
    pub async fn wait_until_ready(&self) -> Result<(), Error> {
        let ready = async {
            self.config_maps.wait_until_ready().await?;
            self.services.wait_until_ready().await?;
            self.deployments.wait_until_ready().await?;
            self.pdbs.wait_until_ready().await?;
            self.hpas.wait_until_ready().await?;
            self.pods.wait_until_ready().await?;
            if let Some(s) = &self.scaled_objects {
                s.wait_until_ready().await?;
            }
            Ok::<(), kube::runtime::reflector::store::WriterDropped>(())
        };
        match tokio::time::timeout(FILL_TIMEOUT, ready).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Cache(format!("child caches: {e}"))),
            Err(_) => Err(Error::Cache(format!(
                "child caches not filled within {FILL_TIMEOUT:?}"
            ))),
        }
    }

    /// The cached child, as JSON, for the drift check.
    pub fn live(&self, kind: ChildKind, namespace: &str, name: &str) -> Option<serde_json::Value> {
        fn typed<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<serde_json::Value>
        where
            K: Resource<DynamicType = ()> + Clone + Serialize + 'static,
        {
            let object = store.get(&ObjectRef::new(name).within(namespace))?;
            serde_json::to_value(object.as_ref()).ok()
        }
        match kind {
            ChildKind::ConfigMap => typed(&self.config_maps, namespace, name),
            ChildKind::Service => typed(&self.services, namespace, name),
            ChildKind::Deployment => typed(&self.deployments, namespace, name),
            ChildKind::PodDisruptionBudget => typed(&self.pdbs, namespace, name),
            ChildKind::HorizontalPodAutoscaler => typed(&self.hpas, namespace, name),
            ChildKind::ScaledObject => {
                let store = self.scaled_objects.as_ref()?;
                let key = ObjectRef::new_with(name, scaled_object_resource()).within(namespace);
                serde_json::to_value(store.get(&key)?.as_ref()).ok()
            }
            ChildKind::HttpRoute => None,
        }
    }

    /// Whether the cache of a kind exists (KEDA's may not; HTTPRoutes, few and optional, are
    /// read when applied).
    pub fn watches(&self, kind: ChildKind) -> bool {
        match kind {
            ChildKind::ScaledObject => self.scaled_objects.is_some(),
            ChildKind::HttpRoute => false,
            _ => true,
        }
    }

    /// Every cached child in `namespace` with a controller owner reference to `owner_uid`:
    /// the candidates of the orphan sweep.
    pub fn owned_by(&self, namespace: &str, owner_uid: &str) -> Vec<CachedChild> {
        fn owned<K: Resource + Clone + 'static>(
            kind: ChildKind,
            store: &Store<K>,
            namespace: &str,
            owner_uid: &str,
            out: &mut Vec<CachedChild>,
        ) where
            K::DynamicType: Eq + Hash + Clone,
        {
            let hits = store.state_filter(|o| {
                o.meta().namespace.as_deref() == Some(namespace)
                    && o.owner_references()
                        .iter()
                        .any(|r| r.uid == owner_uid && r.controller == Some(true))
            });
            out.extend(hits.into_iter().map(|o| CachedChild {
                kind,
                meta: o.meta().clone(),
            }));
        }
        let mut out = Vec::new();
        owned(
            ChildKind::ConfigMap,
            &self.config_maps,
            namespace,
            owner_uid,
            &mut out,
        );
        owned(
            ChildKind::Service,
            &self.services,
            namespace,
            owner_uid,
            &mut out,
        );
        owned(
            ChildKind::Deployment,
            &self.deployments,
            namespace,
            owner_uid,
            &mut out,
        );
        owned(
            ChildKind::PodDisruptionBudget,
            &self.pdbs,
            namespace,
            owner_uid,
            &mut out,
        );
        owned(
            ChildKind::HorizontalPodAutoscaler,
            &self.hpas,
            namespace,
            owner_uid,
            &mut out,
        );
        if let Some(store) = &self.scaled_objects {
            owned(
                ChildKind::ScaledObject,
                store,
                namespace,
                owner_uid,
                &mut out,
            );
        }
        out
    }

    /// The cached Deployment of that name.
    pub fn deployment(&self, namespace: &str, name: &str) -> Option<Arc<Deployment>> {
        self.deployments
            .get(&ObjectRef::new(name).within(namespace))
    }

    /// The cached HPA of that name.
    pub fn hpa(&self, namespace: &str, name: &str) -> Option<Arc<HorizontalPodAutoscaler>> {
        self.hpas.get(&ObjectRef::new(name).within(namespace))
    }

    /// The cached model-server pods in `namespace` that carry every label of `selector`.
    pub fn pods(&self, namespace: &str, selector: &BTreeMap<String, String>) -> Vec<Pod> {
        self.pods
            .state_filter(|p| {
                p.metadata.namespace.as_deref() == Some(namespace)
                    && selector.iter().all(|(k, v)| p.labels().get(k) == Some(v))
            })
            .into_iter()
            .map(|p| p.as_ref().clone())
            .collect()
    }
}

fn spawn_dynamic_reflector(
    drivers: &mut Drivers,
    api: Api<DynamicObject>,
    config: watcher::Config,
    resource: ApiResource,
) -> (Store<DynamicObject>, Triggers<DynamicObject>) {
    let writer = Writer::new(resource);
    let reader = writer.as_reader();
    let (tx, rx) = mpsc::unbounded_channel::<DynamicObject>();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(strip_managed_fields::<DynamicObject>)
        .reflect(writer)
        .touched_objects();
    drivers.0.push(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok(object) => {
                    if tx.send(object).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    warn!(kind = "ScaledObject", error = %e, "watch failed; retrying with backoff")
                }
            }
        }
    }));
    let triggers = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|object| (Ok(object), rx))
    })
    .boxed();
    (reader, triggers)
}

/// The nodes and the pods placed on them, for GPU capacity. Started by the first service that
/// requests GPUs, so clusters without one never pay for a cluster-wide pod watch.
pub struct GpuStores {
    pub nodes: Store<Node>,
    /// Non-terminated pods, cluster-wide, reduced to their node and their containers' limits.
    pub pods: Store<Pod>,
    _drivers: Drivers,
}

impl GpuStores {
    /// Starts the node and pod caches and waits until both are filled.
    pub async fn start(client: &Client) -> Result<Self, Error> {
        let mut drivers = Drivers::default();
        let (nodes, _) = spawn_reflector(
            &mut drivers,
            Api::<Node>::all(client.clone()),
            watcher::Config::default(),
            (),
            strip_node,
            false,
        );
        // Terminated pods hold nothing; the apiserver drops them from the watch when they end.
        let running =
            watcher::Config::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        let (pods, _) = spawn_reflector(
            &mut drivers,
            Api::<Pod>::all(client.clone()),
            running,
            (),
            strip_pod,
            false,
        );
        let ready = async {
            nodes.wait_until_ready().await?;
            pods.wait_until_ready().await
        };
        match tokio::time::timeout(FILL_TIMEOUT, ready).await {
            Ok(Ok(())) => Ok(Self {
                nodes,
                pods,
                _drivers: drivers,
            }),
            Ok(Err(e)) => Err(Error::Cache(format!("node and pod caches: {e}"))),
            Err(_) => Err(Error::Cache(format!(
                "node and pod caches not filled within {FILL_TIMEOUT:?} (can the operator list nodes and pods?)"
            ))),
        }
    }
}

/// A node's image list is its largest part and not needed.
fn strip_node(node: &mut Node) {
    node.metadata.managed_fields = None;
    if let Some(status) = node.status.as_mut() {
        status.images = None;
    }
}

/// Keeps only what GPU accounting reads: the node and each container's limits.
fn strip_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.annotations = None;
    meta.labels = None;
    meta.owner_references = None;
    pod.status = None;
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(PodSpec {
            node_name: spec.node_name,
            containers: spec
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    resources: c.resources.map(|r| ResourceRequirements {
                        limits: r.limits,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
    }
}

/// Whether the apiserver serves KEDA's ScaledObject.
pub async fn keda_installed(client: &Client) -> bool {
    let resource = scaled_object_resource();
    match client.list_api_group_resources(&resource.api_version).await {
        Ok(list) => list.resources.iter().any(|r| r.name == resource.plural),
        Err(_) => false,
    }
}

/// The Experiments, InferenceServices and ShadowDeployments, which each other's controller
/// reads: an InferenceService's Service follows the Experiment that holds it and its mirror
/// configuration the shadows that name it; an Experiment checks and routes to its variants'
/// InferenceServices, a shadow checks its production.
pub struct PeerStores {
    pub experiments: Store<Experiment>,
    pub inference_services: Store<InferenceService>,
    pub shadows: Store<ShadowDeployment>,
}

/// The watch events of [`PeerStores`]: each triggers the other kinds' controllers. The
/// InferenceService events go to the Experiment and the ShadowDeployment controllers alike.
pub struct PeerTriggers {
    pub experiments: Triggers<Experiment>,
    pub inference_services: Triggers<InferenceService>,
    pub inference_services_for_shadows: Triggers<InferenceService>,
    pub shadows: Triggers<ShadowDeployment>,
}

impl PeerStores {
    /// Starts both caches (in `namespace`, or everywhere); their drivers join `drivers`.
    pub fn start(
        client: &Client,
        namespace: Option<&str>,
        drivers: &mut Drivers,
    ) -> (Self, PeerTriggers) {
        let (experiments, experiment_triggers) = spawn_reflector(
            drivers,
            scoped::<Experiment>(client, namespace),
            watcher::Config::default(),
            (),
            strip_managed_fields::<Experiment>,
            true,
        );
        let (inference_services, isvc_triggers) = spawn_reflector(
            drivers,
            scoped::<InferenceService>(client, namespace),
            watcher::Config::default(),
            (),
            strip_managed_fields::<InferenceService>,
            true,
        );
        let (shadows, shadow_triggers) = spawn_reflector(
            drivers,
            scoped::<ShadowDeployment>(client, namespace),
            watcher::Config::default(),
            (),
            strip_managed_fields::<ShadowDeployment>,
            true,
        );
        // One watch, two consumers: each event is forwarded to both controllers.
        let (isvc_for_experiments, isvc_for_shadows) =
            split_triggers(drivers, isvc_triggers.expect("triggers requested"));
        (
            Self {
                experiments,
                inference_services,
                shadows,
            },
            PeerTriggers {
                experiments: experiment_triggers.expect("triggers requested"),
                inference_services: isvc_for_experiments,
                inference_services_for_shadows: isvc_for_shadows,
                shadows: shadow_triggers.expect("triggers requested"),
            },
        )
    }

    /// Waits until both caches hold their first full list.
    pub async fn wait_until_ready(&self) -> Result<(), Error> {
        let ready = async {
            self.experiments.wait_until_ready().await?;
            self.inference_services.wait_until_ready().await?;
            self.shadows.wait_until_ready().await
        };
        match tokio::time::timeout(FILL_TIMEOUT, ready).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(Error::Cache(format!("experiment caches: {e}"))),
            Err(_) => Err(Error::Cache(format!(
                "Experiment, InferenceService and ShadowDeployment caches not filled within {FILL_TIMEOUT:?}"
            ))),
        }
    }

    /// The Experiments in `namespace` whose control is `control`.
    pub fn experiments_of(&self, namespace: &str, control: &str) -> Vec<Arc<Experiment>> {
        self.experiments.state_filter(|e| {
            e.metadata.namespace.as_deref() == Some(namespace) && e.spec.control == control
        })
    }

    /// The ShadowDeployments in `namespace` whose production is `production`.
    pub fn shadows_of(&self, namespace: &str, production: &str) -> Vec<Arc<ShadowDeployment>> {
        self.shadows.state_filter(|s| {
            s.metadata.namespace.as_deref() == Some(namespace) && s.spec.production == production
        })
    }

    /// The cached InferenceService of that name.
    pub fn inference_service(&self, namespace: &str, name: &str) -> Option<Arc<InferenceService>> {
        self.inference_services
            .get(&ObjectRef::new(name).within(namespace))
    }
}

impl ChildStores {
    /// The cached ConfigMap of that name.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        self.config_maps
            .get(&ObjectRef::new(name).within(namespace))
    }
}
