// CPU check of kernels/rowmath.cuh, the per-row math every loss kernel uses (run by CTest).
// References are computed in long double; the float results must match to a few ulps, and the
// precision cases (p_y rounding to 1, a tiny loss) must keep their relative accuracy.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "rowmath.cuh"

static int failures = 0;
static void check(bool ok, const char* what, double got, double want) {
    if (!ok) {
        ++failures;
        std::printf("FAIL %s: got %.17g want %.17g\n", what, got, want);
    }
}
static bool close(double got, long double want, double rel) {
    return std::fabs(got - (double)want) <= rel * std::fabs((double)want) + 1e-300;
}

// Row statistics the way the kernels form them, in T.
template <typename T>
static void row_stats(const std::vector<T>& s, int y, T& m, T& e_y, T& others, T& total) {
    m = s[0];
    for (T v : s) m = v > m ? v : m;
    others = 0;
    for (int j = 0; j < (int)s.size(); ++j)
        if (j != y) others += std::exp(s[j] - m);
    e_y = std::exp(s[y] - m);
    total = others + e_y;
}

template <typename T>
static void check_ce(const std::vector<T>& s, int y, double rel, const char* label) {
    T m, e_y, others, total;
    row_stats(s, y, m, e_y, others, total);
    long double lm = s[0], lsum = 0, lothers = 0;
    for (T v : s) lm = v > lm ? v : lm;
    for (int j = 0; j < (int)s.size(); ++j) {
        long double e = std::exp((long double)s[j] - lm);
        lsum += e;
        if (j != y) lothers += e;
    }
    const long double loss_ref = std::log(lsum) - ((long double)s[y] - lm);
    const T loss = gg_ce_row_loss<T>(s[y] - m, e_y, others, total);
    check(close(loss, loss_ref, rel), label, loss, (double)loss_ref);
    const T n = 4, scale = T(1) / (n * total);
    const T gy = gg_ce_grad<T>(true, e_y, others, scale);
    const long double gy_ref = -lothers / lsum / n;
    check(close(gy, gy_ref, rel), label, gy, (double)gy_ref);
}

int main() {
    std::mt19937_64 gen(12345);
    std::normal_distribution<double> nd(0.0, 3.0);
    for (int t = 0; t < 2000; ++t) {  // random rows, random classes
        const int C = 1 + t % 40, y = (int)(gen() % C);
        std::vector<float> sf(C);
        std::vector<double> sd(C);
        for (int j = 0; j < C; ++j) sd[j] = sf[j] = (float)nd(gen);
        check_ce(sf, y, 2e-5, "float row");
        check_ce(sd, y, 1e-12, "double row");
    }
    // p_y rounds to 1 in float: the target gradient must still be -others/total, not 0.
    std::vector<float> big = {30.f, 0.f, -1.f, 2.f};
    check_ce(big, 0, 1e-5, "p_y ~ 1 (float)");
    // Huge scores: finite loss equal to the log-sum-exp reference.
    std::vector<double> huge = {1e4, -1e4, 9990.0};
    check_ce(huge, 1, 1e-12, "scores 1e4 (double)");
    std::vector<float> hugef = {1e4f, -1e4f, 9990.f};
    check_ce(hugef, 2, 1e-6, "scores 1e4 (float)");
    // Online merge equals the two-pass statistics.
    for (int t = 0; t < 500; ++t) {
        const int C = 2 + t % 300, y = (int)(gen() % C);
        std::vector<double> s(C);
        for (double& v : s) v = nd(gen) * 10;
        double m = -INFINITY, o = 0;
        for (int j = 0; j < C; ++j) {
            if (j == y) gg_online_merge(m, o, s[j], 0.0);
            else gg_online_merge(m, o, s[j], 1.0);
        }
        double m2, e_y, others, total;
        row_stats(s, y, m2, e_y, others, total);
        check(m == m2, "online max", m, m2);
        check(close(o, others, 1e-13), "online sum", o, others);
    }
    check(gg_hinge_margin(2.0, 1.5) == 1.5, "hinge margin", gg_hinge_margin(2.0, 1.5), 1.5);
    if (failures) {
        std::printf("%d failures\n", failures);
        return 1;
    }
    std::printf("rowmath: all checks passed\n");
    return 0;
}
