//! Enumerate-and-test and the sphere-net fit recover planted networks on known projected data.

mod common;

use rand::SeedableRng;
use relu_fpt::backend::{Backend, ProjectedSamples};
use relu_fpt::network::{Layer, Network};
use relu_fpt::search::{
    enumerate_and_test, label_variance, mse_of, search, sphere_net_fit, Chosen, SearchConfig,
    SphereNetConfig,
};

fn planted() -> Network {
    let (a, b) = (0.7f64, 2.5f64);
    Network::new(
        2,
        vec![
            Layer::new(
                2,
                2,
                vec![a.cos(), a.sin(), b.cos(), b.sin()],
                vec![0.3, -0.5],
            )
            .unwrap(),
            Layer::new(2, 1, vec![1.5, -1.0], vec![0.2]).unwrap(),
        ],
    )
    .unwrap()
}

fn draw(net: &Network, n: usize, seed: u64) -> ProjectedSamples {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let r = net.input_dim;
    let mut z = Vec::with_capacity(n * r);
    let mut y = Vec::with_capacity(n);
    for _ in 0..n {
        let x: Vec<f64> = (0..r)
            .map(|_| rand::RngExt::sample(&mut rng, rand_distr::StandardNormal))
            .collect();
        y.push(net.forward_one_f64(&x) as f32);
        z.extend(x.iter().map(|&v| v as f32));
    }
    ProjectedSamples { rank: r, z, y }
}

fn small_config() -> SearchConfig {
    SearchConfig {
        hidden: vec![2],
        budget: 2000,
        batch_size: 500,
        ..SearchConfig::default()
    }
}

#[test]
fn enumerate_recovers_a_planted_network() {
    let net = planted();
    let train = draw(&net, 3000, 1);
    let val = draw(&net, 1500, 2);
    let var = label_variance(&val.y);
    let config = small_config();
    let res = enumerate_and_test(common::cpu(), &train, &val, &config).unwrap();
    let ratio = res.validation_mse / var;
    assert!(
        ratio < 1e-3,
        "validation MSE/Var {ratio}, history {:?}",
        res.history
    );
    assert!(res.candidates_evaluated <= config.budget);
    assert!(res.full_net_log10 > (config.budget as f64).log10());
    // The reported MSE is the network's own MSE on the validation samples.
    let direct = mse_of(&res.network, &val);
    assert!(
        (direct - res.validation_mse).abs() <= 1e-3 * var,
        "{direct} vs {}",
        res.validation_mse
    );
    // Refinement never makes the best candidate worse.
    assert!(res.history.windows(2).all(|w| w[1] <= w[0]));
}

#[test]
fn enumerate_is_deterministic_and_backend_independent() {
    let net = planted();
    let train = draw(&net, 600, 3);
    let val = draw(&net, 300, 4);
    let config = SearchConfig {
        budget: 300,
        ..small_config()
    };
    let a = enumerate_and_test(common::cpu(), &train, &val, &config).unwrap();
    let b = enumerate_and_test(common::cpu(), &train, &val, &config).unwrap();
    assert_eq!(a.network, b.network);
    let g = enumerate_and_test(common::gpu() as &dyn Backend, &train, &val, &config).unwrap();
    let var = label_variance(&val.y);
    assert!(
        (g.validation_mse - a.validation_mse).abs() < 0.05 * var,
        "gpu {} cpu {}",
        g.validation_mse,
        a.validation_mse
    );
}

#[test]
fn exhaustive_enumeration_of_a_tiny_net() {
    // One bias-free unit in r = 1: the net is {+1, -1} x {0}, two candidates in all.
    let net = Network::new(
        1,
        vec![
            Layer::new(1, 1, vec![-1.0], vec![0.0]).unwrap(),
            Layer::new(1, 1, vec![2.0], vec![0.0]).unwrap(),
        ],
    )
    .unwrap();
    let train = draw(&net, 400, 5);
    let val = draw(&net, 200, 6);
    let config = SearchConfig {
        hidden: vec![1],
        budget: 10,
        bias_bound: 0.0,
        refine_rounds: 0,
        ..SearchConfig::default()
    };
    let res = enumerate_and_test(common::cpu(), &train, &val, &config).unwrap();
    assert!(res.exhaustive);
    assert_eq!(res.candidates_evaluated, 2);
    assert!(res.validation_mse < 1e-8, "{}", res.validation_mse);
    assert!((res.network.layers[0].weights[0] + 1.0).abs() < 1e-6);
}

#[test]
fn sphere_net_fits_and_search_keeps_the_better_fit() {
    let net = planted();
    let train = draw(&net, 3000, 7);
    let val = draw(&net, 1500, 8);
    let var = label_variance(&val.y);
    let fit = sphere_net_fit(&train, &val, &SphereNetConfig::default()).unwrap();
    assert!(
        fit.validation_mse / var < 0.02,
        "{}",
        fit.validation_mse / var
    );
    assert!((mse_of(&fit.network, &val) - fit.validation_mse).abs() < 1e-3 * var);
    let config = SearchConfig {
        budget: 200,
        refine_rounds: 0,
        ..small_config()
    };
    let rep = search(
        common::cpu(),
        &train,
        &val,
        &config,
        Some(&SphereNetConfig::default()),
    )
    .unwrap();
    let sphere = rep.sphere_validation_mse.unwrap();
    let best = sphere.min(rep.enumerate.validation_mse);
    assert_eq!(rep.validation_mse, best);
    assert_eq!(
        rep.chosen,
        if sphere < rep.enumerate.validation_mse {
            Chosen::SphereNet
        } else {
            Chosen::Enumerate
        }
    );
}

#[test]
fn bad_search_requests_are_errors() {
    let net = planted();
    let train = draw(&net, 50, 9);
    let val = draw(&net, 20, 10);
    let cpu = common::cpu();
    let no_hidden = SearchConfig {
        hidden: vec![],
        ..small_config()
    };
    assert!(enumerate_and_test(cpu, &train, &val, &no_hidden).is_err());
    let no_budget = SearchConfig {
        budget: 0,
        ..small_config()
    };
    assert!(enumerate_and_test(cpu, &train, &val, &no_budget).is_err());
    let empty = ProjectedSamples {
        rank: 2,
        z: vec![],
        y: vec![],
    };
    assert!(enumerate_and_test(cpu, &train, &empty, &small_config()).is_err());
}
