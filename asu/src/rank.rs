//! Rank correlation: how well one quantity orders another (a predictor's
//! thinking-length estimates against the lengths spent), reported by the
//! gateway's `/stats` and the load generator's report alike.

/// Spearman rank correlation (ties share their mean rank).
pub fn spearman(pairs: &[(f64, f64)]) -> Option<f64> {
    let ranks = |f: &dyn Fn(&(f64, f64)) -> f64| {
        let mut idx: Vec<usize> = (0..pairs.len()).collect();
        idx.sort_by(|a, b| f(&pairs[*a]).total_cmp(&f(&pairs[*b])));
        let mut rank = vec![0.0; pairs.len()];
        let mut i = 0;
        while i < idx.len() {
            let mut j = i;
            while j + 1 < idx.len() && f(&pairs[idx[j + 1]]) == f(&pairs[idx[i]]) {
                j += 1;
            }
            for k in i..=j {
                rank[idx[k]] = (i + j) as f64 / 2.0;
            }
            i = j + 1;
        }
        rank
    };
    let (a, b) = (ranks(&|x| x.0), ranks(&|x| x.1));
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(&b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_ties_and_degenerate_inputs() {
        let up: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), f64::from(i * i))).collect();
        assert!((spearman(&up).unwrap_or(0.0) - 1.0).abs() < 1e-12);
        let down: Vec<(f64, f64)> = (0..10).map(|i| (f64::from(i), -f64::from(i))).collect();
        assert!((spearman(&down).unwrap_or(0.0) + 1.0).abs() < 1e-12);
        // a constant side has no ranking
        assert_eq!(spearman(&[(1.0, 2.0), (1.0, 3.0)]), None);
        assert_eq!(spearman(&[]), None);
        // ties share their mean rank
        let tied = [(1.0, 1.0), (1.0, 2.0), (2.0, 3.0), (3.0, 4.0)];
        let r = spearman(&tied).unwrap_or(0.0);
        assert!(r > 0.9 && r < 1.0, "{r}");
    }
}
