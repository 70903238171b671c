//! Sentences the benchmark sends: short (~10 tokens) and long (~70-80 tokens).

pub const SHORT: [&str; 8] = [
    "The quick brown fox jumps over the lazy dog.",
    "I loved every minute of this film.",
    "Where is the nearest train station?",
    "The meeting has been moved to Thursday.",
    "This coffee is far too bitter for me.",
    "Our team shipped the release on time.",
    "Please reset my password.",
    "The weather is lovely today.",
];

pub const LONG: [&str; 4] = [
    "Kubernetes operators encode the knowledge of how to run a piece of software into a controller that watches custom resources, compares the desired state they declare with what is actually running in the cluster, and takes the actions a human operator would otherwise take by hand, such as creating deployments, rotating credentials, scaling replicas, or rolling back a release that failed its health checks.",
    "The restaurant was recommended by several friends, so we booked a table weeks in advance; the starters were inventive and beautifully presented, but the main courses arrived lukewarm after a long wait, the service became noticeably distracted as the evening went on, and by the time dessert came we had mostly lost our appetite for the whole experience.",
    "Dynamic batching groups requests that arrive close together into a single forward pass of the model, trading a small and bounded amount of queueing delay for much better use of the matrix multiplication units, which is why an inference server under load can answer many more requests per second than a simple loop that runs the model once for every incoming request.",
    "After three days of heavy rain the river rose above its banks in several places along the valley, closing the main road between the two villages, flooding the cellars of houses near the old bridge, and forcing the local council to open the school gymnasium as a shelter for families who could not safely stay in their homes overnight.",
];
