//! Which optimiser the secret-shared protocol can use (`docs/training.md`, "The optimiser"),
//! measured in the clear: Adam (today's default, not computable on additive shares) against
//! block-Jacobi preconditioned gradient descent with momentum, whose every operation is linear
//! in the shares once each party holds its own Gram block. Both minimise the same objective,
//! the first-order Taylor loss (1/n)·Σ[(½ − y)·z + z²/8] + λ/2·‖w‖², on 70% of each book; the
//! report gives the full-batch steps each needs to come within 10^-4 of the optimum (found by
//! solving the normal equations) and the test AUC on the other 30%.
//!
//! ```text
//! cargo run --release --example shared_optimiser
//! ```

// Small dense linear algebra reads best with indices.
#![allow(clippy::needless_range_loop)]

use fedlearn::{evaluate, Missing, Reading, Table};

fn load(name: &str, label: Option<&str>) -> Table {
    let path = format!("{}/data/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    Table::parse_csv(&path, &text, "id", label, Missing::Reject, &|_| {
        Reading::Number
    })
    .expect("table")
}

/// splitmix64, for the synthetic books.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn uniform(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform().max(1e-300), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// A book: standardised rows (the guest's columns and intercept, then the host's), labels,
/// and each party's column count (the guest's first).
struct Book {
    name: String,
    x: Vec<Vec<f64>>,
    y: Vec<f64>,
    blocks: Vec<usize>,
}

fn standardise(columns: &mut [Vec<f64>]) {
    for c in columns.iter_mut() {
        let n = c.len() as f64;
        let mean = c.iter().sum::<f64>() / n;
        let sd = (c.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n)
            .sqrt()
            .max(1e-12);
        c.iter_mut().for_each(|v| *v = (*v - mean) / sd);
    }
}

fn from_tables(name: &str, guest: &Table, host: &Table) -> Book {
    let columns = |t: &Table| -> Vec<Vec<f64>> {
        (0..t.features())
            .map(|j| t.values().column(j).to_vec())
            .collect()
    };
    let (mut g, mut h) = (columns(guest), columns(host));
    standardise(&mut g);
    standardise(&mut h);
    let rows = guest.rows();
    g.push(vec![1.0; rows]);
    let blocks = vec![g.len(), h.len()];
    let all: Vec<Vec<f64>> = g.into_iter().chain(h).collect();
    Book {
        name: name.into(),
        x: (0..rows)
            .map(|i| all.iter().map(|c| c[i]).collect())
            .collect(),
        y: guest.labels().expect("labels").to_vec(),
        blocks,
    }
}

/// Guest and host columns, each host column correlated with a guest column by ρ; about 5%
/// events.
fn synthetic(name: &str, rows: usize, guest: usize, host: usize, rho: f64, seed: u64) -> Book {
    let mut rng = Rng(seed);
    let weights: Vec<f64> = (0..guest + host).map(|_| rng.normal() * 0.6).collect();
    let (mut x, mut y) = (Vec::with_capacity(rows), Vec::with_capacity(rows));
    for _ in 0..rows {
        let g: Vec<f64> = (0..guest).map(|_| rng.normal()).collect();
        let h: Vec<f64> = (0..host)
            .map(|j| rho * g[j % guest] + (1.0 - rho * rho).sqrt() * rng.normal())
            .collect();
        let z = g
            .iter()
            .chain(&h)
            .zip(&weights)
            .map(|(a, b)| a * b)
            .sum::<f64>()
            - 3.0;
        y.push(f64::from(rng.uniform() < 1.0 / (1.0 + (-z).exp())));
        let mut row = g;
        row.push(1.0);
        row.extend(h);
        x.push(row);
    }
    Book {
        name: name.into(),
        x,
        y,
        blocks: vec![guest + 1, host],
    }
}

/// Cholesky solve of a symmetric positive-definite system.
fn solve(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            l[i][j] = if i == j {
                (a[i][i] - s).max(1e-300).sqrt()
            } else {
                (a[i][j] - s) / l[j][j]
            };
        }
    }
    let mut z = vec![0.0; n];
    for i in 0..n {
        z[i] = (b[i] - (0..i).map(|k| l[i][k] * z[k]).sum::<f64>()) / l[i][i];
    }
    let mut x = vec![0.0; n];
    for i in (0..n).rev() {
        x[i] = (z[i] - (i + 1..n).map(|k| l[k][i] * x[k]).sum::<f64>()) / l[i][i];
    }
    x
}

/// The Taylor objective: Hessian H = XᵀX/(4n) + λI (intercept unpenalised), linear term c.
struct Quadratic {
    h: Vec<Vec<f64>>,
    c: Vec<f64>,
}

impl Quadratic {
    fn new(book: &Book, rows: &[usize], l2: f64, intercept: usize) -> Quadratic {
        let m = book.x[0].len();
        let n = rows.len() as f64;
        let mut h = vec![vec![0.0; m]; m];
        let mut c = vec![0.0; m];
        for &r in rows {
            let x = &book.x[r];
            for i in 0..m {
                c[i] += (0.5 - book.y[r]) * x[i] / n;
                for j in 0..=i {
                    h[i][j] += x[i] * x[j] / (4.0 * n);
                }
            }
        }
        for i in 0..m {
            for j in 0..i {
                h[j][i] = h[i][j];
            }
            if i != intercept {
                h[i][i] += l2;
            }
        }
        Quadratic { h, c }
    }

    fn gradient(&self, w: &[f64]) -> Vec<f64> {
        self.h
            .iter()
            .zip(&self.c)
            .map(|(row, c)| c + row.iter().zip(w).map(|(a, b)| a * b).sum::<f64>())
            .collect()
    }

    /// c·w + ½·wᵀHw.
    fn loss(&self, w: &[f64]) -> f64 {
        let g = self.gradient(w);
        w.iter()
            .zip(g.iter().zip(&self.c))
            .map(|(w, (g, c))| 0.5 * w * (g + c))
            .sum()
    }
}

/// Full-batch steps until the loss is within `tolerance` of the optimum ("> max" if not
/// within `max`), and the weights reached.
fn run(
    q: &Quadratic,
    optimum: f64,
    tolerance: f64,
    max: usize,
    mut step: impl FnMut(&[f64], &mut [f64]),
) -> (String, Vec<f64>) {
    let mut w = vec![0.0; q.c.len()];
    for t in 1..=max {
        let g = q.gradient(&w);
        step(&g, &mut w);
        if q.loss(&w) - optimum < tolerance {
            return (t.to_string(), w);
        }
    }
    (format!("> {max}"), w)
}

fn auc(book: &Book, rows: &[usize], w: &[f64]) -> f64 {
    let p: Vec<f64> = rows
        .iter()
        .map(|&r| {
            let z: f64 = book.x[r].iter().zip(w).map(|(a, b)| a * b).sum();
            1.0 / (1.0 + (-z).exp())
        })
        .collect();
    let y: Vec<f64> = rows.iter().map(|&r| book.y[r]).collect();
    evaluate(&p, &y).expect("scores and labels").auc
}

fn main() {
    let books = [
        from_tables(
            "credit",
            &load("default_credit_hetero_guest.csv", Some("y")),
            &load("default_credit_hetero_host.csv", None),
        ),
        from_tables(
            "breast",
            &load("breast_hetero_guest.csv", Some("y")),
            &load("breast_hetero_host.csv", None),
        ),
        synthetic("synthetic, ρ = 0", 20_000, 10, 20, 0.0, 1),
        synthetic("synthetic, ρ = 0.5", 20_000, 10, 20, 0.5, 2),
        synthetic("synthetic, ρ = 0.9", 20_000, 10, 20, 0.9, 3),
    ];
    let (l2, tolerance, max) = (1e-3, 1e-4, 2000);
    let settings = [(1.0, 0.0), (0.7, 0.3), (0.5, 0.5), (0.3, 0.8)];
    println!(
        "book | AUC at the optimum | Adam 0.05/(1 + 0.02t): steps, AUC | block Jacobi \
         (rate/momentum 1.0/0, 0.7/0.3, 0.5/0.5, 0.3/0.8): steps, AUC | plain GD 1.0: steps"
    );
    for book in &books {
        let rows = book.y.len();
        let train: Vec<usize> = (0..rows).filter(|i| i % 10 < 7).collect();
        let test: Vec<usize> = (0..rows).filter(|i| i % 10 >= 7).collect();
        let q = Quadratic::new(book, &train, l2, book.blocks[0] - 1);
        let minus_c: Vec<f64> = q.c.iter().map(|c| -c).collect();
        let exact = solve(&q.h, &minus_c);
        let optimum = q.loss(&exact);
        let width = q.c.len();
        let (mut m1, mut m2, mut t) = (vec![0.0; width], vec![0.0; width], 0);
        let adam = run(&q, optimum, tolerance, max, |g, w| {
            t += 1;
            let rate = 0.05 / (1.0 + 0.02 * f64::from(t));
            for i in 0..w.len() {
                m1[i] = 0.9 * m1[i] + 0.1 * g[i];
                m2[i] = 0.999 * m2[i] + 0.001 * g[i] * g[i];
                let mh = m1[i] / (1.0 - 0.9f64.powi(t));
                let vh = m2[i] / (1.0 - 0.999f64.powi(t));
                w[i] -= rate * mh / (vh.sqrt() + 1e-8);
            }
        });
        // Each party's own block of H, inverted by that party.
        let mut bounds = vec![0];
        for b in &book.blocks {
            bounds.push(bounds.last().expect("a start") + b);
        }
        let blocks: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
        let jacobi = |g: &[f64]| -> Vec<f64> {
            let mut out = vec![0.0; g.len()];
            for &(a, b) in &blocks {
                let sub: Vec<Vec<f64>> = (a..b).map(|i| q.h[i][a..b].to_vec()).collect();
                out[a..b].copy_from_slice(&solve(&sub, &g[a..b]));
            }
            out
        };
        let cells: Vec<String> = settings
            .iter()
            .map(|&(rate, momentum)| {
                let mut velocity = vec![0.0; width];
                let (steps, w) = run(&q, optimum, tolerance, max, |g, w| {
                    let d = jacobi(g);
                    for i in 0..w.len() {
                        velocity[i] = momentum * velocity[i] - rate * d[i];
                        w[i] += velocity[i];
                    }
                });
                format!("{steps}, {:.4}", auc(book, &test, &w))
            })
            .collect();
        let plain = run(&q, optimum, tolerance, max, |g, w| {
            for (w, g) in w.iter_mut().zip(g) {
                *w -= g;
            }
        });
        println!(
            "{} | {:.4} | {}, {:.4} | {} | {}",
            book.name,
            auc(book, &test, &exact),
            adam.0,
            auc(book, &test, &adam.1),
            cells.join(" | "),
            plain.0
        );
    }
}
