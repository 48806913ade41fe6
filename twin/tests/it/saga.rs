//! The commissioning saga against a running twin.

use citytwin_core::event::{AssetCreated, Location, Timestamp};
use citytwin_core::log::{Durability, LogConfig};
use citytwin_twin::asset::logic::Lifecycle;
use citytwin_twin::city::{Twin, TwinConfig};
use citytwin_twin::saga::{CommissioningSaga, SagaOutcome, Step, TwinEffects};

fn asset(id: &str) -> AssetCreated {
    AssetCreated {
        asset_id: id.into(),
        asset_type: "air_quality_sensor".into(),
        name: None,
        location: Some(Location::new(40.7128, -74.006)),
        reporting_interval_s: Some(60),
        attributes: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commissioning_registers_and_activates_or_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let config = TwinConfig {
        shards: 2,
        log: LogConfig { durability: Durability::Always, ..LogConfig::default() },
        ..TwinConfig::new(dir.path())
    };
    let twin = Twin::start(config).await.unwrap();
    let now = || Timestamp::from_secs(1_736_899_200);
    let ok = |_: &str| Ok(());

    let effects = TwinEffects {
        twin: &twin,
        asset: asset("aq1"),
        organization: Some("org_a".into()),
        configure: ok,
        reset: ok,
        now: now(),
    };
    let saga = CommissioningSaga::new(twin.log().clone(), "saga-1");
    assert_eq!(saga.run(&effects, now).await, Ok(SagaOutcome::Completed));
    assert_eq!(twin.asset_state("aq1").await.unwrap().status, Lifecycle::Commissioned);

    // The same id cannot be reserved by another saga.
    let effects =
        TwinEffects { twin: &twin, asset: asset("aq1"), organization: None, configure: ok, reset: ok, now: now() };
    let outcome = CommissioningSaga::new(twin.log().clone(), "saga-2").run(&effects, now).await.unwrap();
    assert!(matches!(outcome, SagaOutcome::Compensated { failed: Step::ReserveId, .. }), "{outcome:?}");

    // A device that refuses its configuration: the reservation is released, nothing registered.
    let refuse = |_: &str| Err("device rejected the configuration".to_owned());
    let effects =
        TwinEffects { twin: &twin, asset: asset("aq2"), organization: None, configure: refuse, reset: ok, now: now() };
    let outcome = CommissioningSaga::new(twin.log().clone(), "saga-3").run(&effects, now).await.unwrap();
    assert_eq!(
        outcome,
        SagaOutcome::Compensated { failed: Step::ConfigureDevice, reason: "device rejected the configuration".into() }
    );
    assert_eq!(twin.asset_state("aq2").await.unwrap().status, Lifecycle::Unregistered);
    // ... so a later saga can take the id.
    let effects =
        TwinEffects { twin: &twin, asset: asset("aq2"), organization: None, configure: ok, reset: ok, now: now() };
    let outcome = CommissioningSaga::new(twin.log().clone(), "saga-4").run(&effects, now).await.unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    twin.shutdown().await.unwrap();
}
