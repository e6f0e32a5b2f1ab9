//! Integration tests: the real `runner` binary, run in a temp dir per test.

#[path = "suite/util.rs"]
mod util;

#[path = "suite/dry_run.rs"]
mod dry_run;

#[path = "suite/run.rs"]
mod run;

#[path = "suite/report_plot.rs"]
mod report_plot;
#[path = "suite/robust.rs"]
mod robust;

#[path = "suite/arch_params.rs"]
mod arch_params;

#[path = "suite/plugins.rs"]
mod plugins;

#[path = "suite/bench.rs"]
mod bench;

#[path = "suite/cluster.rs"]
mod cluster;

#[path = "suite/seeds.rs"]
mod seeds;

#[path = "suite/fetch.rs"]
mod fetch;

#[path = "suite/serve.rs"]
mod serve;

#[path = "suite/browser.rs"]
mod browser;
