using DotQuant.Runtime;
using static TorchSharp.torch;

namespace DotQuant.Engine.Rotation;

/// <summary>How a Hadamard matrix of order n is built: H_n = H_K ⊗ H_M with H_K from a
/// construction below and H_M Sylvester (spec §5.8). <see cref="Kind"/> names the construction
/// of H_K; "block-diagonal" is the fallback I_{n/M} ⊗ H_M when no order-K matrix is known.</summary>
public sealed record HadamardPlan(int Size, int K, string Kind, int M)
{
    public bool BlockDiagonal => Kind == "block-diagonal";
    /// <summary>√ of the matrix's row norm²: dividing by it makes the matrix orthogonal.</summary>
    public double Norm => Math.Sqrt(BlockDiagonal ? M : Size);
    public override string ToString() => BlockDiagonal ? $"I{Size / M} ⊗ H{M} (fallback)" : K == 1 ? $"Sylvester {Size}" : $"{Kind} {K} ⊗ Sylvester {M}";
}

/// <summary>±1 Hadamard matrices (H·Hᵀ = n·I) of every order the supported models need:
/// Sylvester (powers of two), Paley I (q ≡ 3 mod 4 prime, order q+1), Paley II (q ≡ 1 mod 4 prime,
/// order 2(q+1)), and a Goethals–Seidel matrix of order 172 (LLaMA-7B's 11008 = 172·64 and
/// stories260K's MLP), for which no Paley order exists. Products are Kronecker products with the
/// outer index over K, so an n-vector viewed as [K, M] is transformed as H_K · X · H_Mᵀ.</summary>
public static class Hadamard
{
    /// <summary>Four ±1 sequences of length 43 whose periodic autocorrelations sum to zero at every
    /// nonzero shift (the first row of N. J. A. Sloane's had.172.will, a Williamson matrix); the
    /// Goethals–Seidel array turns them into a Hadamard matrix of order 172. Checked by a test.</summary>
    static readonly string[] Sequences172 =
    [
        "+-+-++++--++---+---++--++++-+-+++-++--++-++",
        "+-+----++++++-+++-++++++----+-+--++-++-++--",
        "++-+-+--++-+-+++++-+-++--+-+-++++-+----+-++",
        "--+--+-++++---+++---++++-+--+--++--------++",
    ];

    public static bool IsPowerOfTwo(long n) => n > 0 && (n & (n - 1)) == 0;

    /// <summary>The smallest K = odd·2^b (b ≥ 2, or K = 1 for powers of two) with a known
    /// construction; the block-diagonal fallback when none exists (e.g. 13696).</summary>
    public static HadamardPlan Plan(int n)
    {
        if (n <= 0) throw new ArgumentOutOfRangeException(nameof(n));
        if (IsPowerOfTwo(n)) return new HadamardPlan(n, 1, "sylvester", n);
        int odd = n, twos = 0;
        while (odd % 2 == 0) { odd /= 2; twos++; }
        for (int b = 2; b <= twos; b++)
        {
            int k = odd << b;
            if (Construction(k) is { } kind) return new HadamardPlan(n, k, kind, n / k);
        }
        int m = 1 << twos;
        return new HadamardPlan(n, 1, "block-diagonal", m);
    }

    static string? Construction(int k)
    {
        if (k == 172) return "goethals-seidel";
        if (k % 4 != 0) return null;
        if (IsPrime(k - 1) && (k - 1) % 4 == 3) return "paley1";
        if (k % 2 == 0 && IsPrime(k / 2 - 1) && (k / 2 - 1) % 4 == 1) return "paley2";
        return null;
    }

    /// <summary>The ±1 matrix of the plan (int8 would do; fp64 keeps later products exact).</summary>
    public static Tensor Matrix(HadamardPlan plan)
    {
        using var scope = NewDisposeScope();
        var hm = Sylvester(plan.M);
        Tensor result;
        if (plan.BlockDiagonal) result = kron(eye(plan.Size / plan.M, dtype: ScalarType.Float64), hm);
        else if (plan.K == 1) result = hm;
        else result = kron(Small(plan.K, plan.Kind), hm);
        return scope.MoveToOuter(result);
    }

    /// <summary>The order-K factor of a plan as a dense ±1 fp64 matrix.</summary>
    public static Tensor Small(int k, string kind) => kind switch
    {
        "sylvester" => Sylvester(k),
        "paley1" => PaleyI(k - 1),
        "paley2" => PaleyII(k / 2 - 1),
        "goethals-seidel" => GoethalsSeidel(Sequences172),
        _ => throw new ArgumentException($"no Hadamard construction '{kind}'"),
    };

    public static Tensor Sylvester(int n)
    {
        if (!IsPowerOfTwo(n)) throw new ArgumentException($"Sylvester order {n} is not a power of two");
        var h = new double[n * n];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < n; j++)
                h[i * n + j] = (System.Numerics.BitOperations.PopCount((uint)(i & j)) & 1) == 0 ? 1 : -1;
        return tensor(h, [n, n]);
    }

    /// <summary>Paley I: q prime, q ≡ 3 (mod 4); H = I + S with S = [[0, 1ᵀ], [−1, χ(j−i)]].</summary>
    public static Tensor PaleyI(int q)
    {
        int n = q + 1;
        var h = new double[n * n];
        for (int j = 1; j < n; j++) { h[j] = 1; h[j * n] = -1; }
        for (int i = 0; i < q; i++)
            for (int j = 0; j < q; j++)
                h[(i + 1) * n + j + 1] = Legendre(j - i, q);
        for (int i = 0; i < n; i++) h[i * n + i] += 1;
        return tensor(h, [n, n]);
    }

    /// <summary>Paley II: q prime, q ≡ 1 (mod 4); H = C ⊗ [[1,−1],[−1,−1]] + I ⊗ [[1,1],[1,−1]] with the
    /// symmetric conference matrix C = [[0, 1ᵀ], [1, χ(j−i)]].</summary>
    public static Tensor PaleyII(int q)
    {
        int m = q + 1;
        var c = new double[m * m];
        for (int j = 1; j < m; j++) { c[j] = 1; c[j * m] = 1; }
        for (int i = 0; i < q; i++)
            for (int j = 0; j < q; j++)
                c[(i + 1) * m + j + 1] = Legendre(j - i, q);
        using var cm = tensor(c, [m, m]);
        using var a = tensor(new double[] { 1, -1, -1, -1 }, [2, 2]);
        using var b = tensor(new double[] { 1, 1, 1, -1 }, [2, 2]);
        using var i2 = eye(m, dtype: ScalarType.Float64);
        using var left = kron(cm, a);
        using var right = kron(i2, b);
        return left.Plus(right);
    }

    /// <summary>Goethals–Seidel array on the circulants A, B, C, D of four sequences with zero
    /// periodic autocorrelation sum: [[A, BR, CR, DR], [−BR, A, DᵀR, −CᵀR], [−CR, −DᵀR, A, BᵀR],
    /// [−DR, CᵀR, −BᵀR, A]], R the back-identity.</summary>
    static Tensor GoethalsSeidel(string[] rows)
    {
        int n = rows[0].Length;
        using var scope = NewDisposeScope();
        Tensor Circulant(string s)
        {
            var v = new double[n * n];
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    v[i * n + j] = s[((j - i) % n + n) % n] == '+' ? 1 : -1;
            return tensor(v, [n, n]);
        }
        var r = eye(n, dtype: ScalarType.Float64).flip(1);
        var A = Circulant(rows[0]); var B = Circulant(rows[1]); var C = Circulant(rows[2]); var D = Circulant(rows[3]);
        var h = cat([
            cat([A, B.matmul(r), C.matmul(r), D.matmul(r)], 1),
            cat([-B.matmul(r), A, D.t().matmul(r), -C.t().matmul(r)], 1),
            cat([-C.matmul(r), -D.t().matmul(r), A, B.t().matmul(r)], 1),
            cat([-D.matmul(r), C.t().matmul(r), -B.t().matmul(r), A], 1),
        ], 0);
        return scope.MoveToOuter(h);
    }

    /// <summary>x ↦ x·(H_K ⊗ H_M)/√n along the last dimension, never forming the n×n matrix:
    /// viewing x as [.., K, M], x(A ⊗ B) = Aᵀ X B. Used by the runtime before down_proj (QuaRot's R4).</summary>
    public sealed class Transform : IDisposable
    {
        readonly Tensor? _k;           // H_K/√K (fp32), null when K = 1
        readonly Tensor _m;            // H_M/√M (fp32)
        readonly HadamardPlan _plan;

        public Transform(HadamardPlan plan)
        {
            _plan = plan;
            using var hm = Sylvester(plan.M);
            _m = hm.div(Scalars.Of(Math.Sqrt(plan.M))).to(ScalarType.Float32).DetachFromDisposeScope();
            if (!plan.BlockDiagonal && plan.K > 1)
            {
                using var hk = Small(plan.K, plan.Kind);
                _k = hk.div(Scalars.Of(Math.Sqrt(plan.K))).to(ScalarType.Float32).DetachFromDisposeScope();
            }
        }

        public HadamardPlan Plan => _plan;

        public Tensor Apply(Tensor x)
        {
            using var scope = NewDisposeScope();
            long n = x.shape[^1];
            if (n != _plan.Size) throw new DotQuantException(ErrorCodes.Internal, $"Hadamard transform of size {_plan.Size} applied to {n} features");
            var shape = x.shape;
            int k = _plan.BlockDiagonal ? _plan.Size / _plan.M : _plan.K;
            // Both products as single GEMMs over all rows: X·H_M, then Aᵀ·X computed as (Xᵀ·A)ᵀ. Each
            // intermediate (and the views onto it, which hold its storage) is freed as soon as the next
            // exists: the input is the MLP's widest tensor, and a scope holding them all kept four copies of
            // it at once (the memory plan counts two).
            var y = x.reshape(-1, k, _plan.M);
            if (_plan.M > 1)
            {
                using var hm = _m.to(x.dtype);
                y = Replace(y, y.matmul(hm));
            }
            if (_k is not null)
            {
                using (var t = y.transpose(1, 2)) y = Replace(y, t.contiguous());
                using (var hk = _k.to(x.dtype)) y = Replace(y, y.matmul(hk));
                using (var t = y.transpose(1, 2)) y = Replace(y, t.reshape(shape));
            }
            else y = Replace(y, y.reshape(shape));
            return scope.MoveToOuter(y);
        }

        /// <summary>The next intermediate, releasing the previous one (a view of the caller's input releases
        /// only the view).</summary>
        static Tensor Replace(Tensor previous, Tensor next)
        {
            previous.Dispose();
            return next;
        }

        public void Dispose()
        {
            _k?.Dispose();
            _m.Dispose();
        }
    }

    static int Legendre(int a, int q)
    {
        a %= q;
        if (a < 0) a += q;
        if (a == 0) return 0;
        long r = 1, b = a, e = (q - 1) / 2;
        while (e > 0) { if ((e & 1) == 1) r = r * b % q; b = b * b % q; e >>= 1; }
        return r == 1 ? 1 : -1;
    }

    static bool IsPrime(int n)
    {
        if (n < 2) return false;
        for (int i = 2; (long)i * i <= n; i++) if (n % i == 0) return false;
        return true;
    }
}
