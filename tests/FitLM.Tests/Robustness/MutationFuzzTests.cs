using FitLM.Formats;
using FitLM.Model;
using FsCheck;
using FsCheck.Fluent;
using Xunit;
using Xunit.Abstractions;

namespace FitLM.Tests.Robustness;

/// <summary>One change to a file: bytes overwritten at an offset, or the file cut short.</summary>
public sealed record Mutation(string File, long Offset, byte[] Bytes, long TruncateTo)
{
    public override string ToString() => TruncateTo >= 0
        ? $"{System.IO.Path.GetFileName(File)}: truncate to {TruncateTo}"
        : $"{System.IO.Path.GetFileName(File)}: write {Convert.ToHexString(Bytes)} at {Offset}";
}

/// <summary>
/// Property: whatever single mutation is applied to a real model file (GGUF or a Hugging Face folder's
/// safetensors/JSON), opening and loading the model either succeeds or ends in a FitLMException — never
/// another exception, a hang, or an allocation sized by a corrupt field. Mutations are applied in place
/// and undone, so each case costs a few writes, not a copy of the model.
/// </summary>
public class MutationFuzzTests(ITestOutputHelper output)
{
    private static readonly ulong[] InterestingValues =
    [
        0, 1, 2, 3, 4, 5, 7, 8, 31, 32, 33, 255, 256, 0x7F, 0x80, 0xFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
        0x100000000, 1UL << 40, 1UL << 62, long.MaxValue, ulong.MaxValue, ulong.MaxValue - 1,
    ];

    private static Gen<byte[]> ValueBytes() => Gen.OneOf(
        Gen.Elements(InterestingValues).SelectMany(v => Gen.Elements(1, 2, 4, 8).Select(w => BitConverter.GetBytes(v)[..w])),
        Gen.Choose(0, 255).Select(b => new[] { (byte)b }),
        Gen.ArrayOf(Gen.Choose(0, 255).Select(b => (byte)b)).Where(a => a.Length is > 0 and <= 16));

    /// <summary>Offsets weighted towards the regions where fields that drive allocation and validation live.</summary>
    private static Gen<Mutation> MutationsOf(string file, params (long start, long end, int weight)[] regions)
    {
        long length = new FileInfo(file).Length;
        var writes = Gen.Frequency(regions.Select(r => (r.weight,
            Gen.Choose(0, (int)Math.Min(int.MaxValue, Math.Max(0, r.end - r.start - 1))).Select(o => r.start + o))).ToArray())
            .SelectMany(off => ValueBytes().Select(b => new Mutation(file, off, b, -1)));
        var truncations = Gen.Choose(0, (int)Math.Min(int.MaxValue, length - 1)).Select(n => new Mutation(file, 0, [], n));
        return Gen.Frequency((9, writes), (1, truncations));
    }

    /// <summary>
    /// Same-length rewrites of the numbers in a JSON text (shapes, offsets, sizes, ids): the JSON stays valid,
    /// so these reach the checks behind the parser rather than the parser itself.
    /// </summary>
    private static Gen<Mutation> NumberRewritesOf(string file, long start, long end)
    {
        var bytes = File.ReadAllBytes(file);
        var runs = new List<(long at, int len)>();
        for (long i = start; i < Math.Min(end, bytes.Length); i++)
        {
            if (!char.IsAsciiDigit((char)bytes[i]) || (i > 0 && char.IsAsciiDigit((char)bytes[i - 1]))) continue;
            int len = 0;
            while (i + len < bytes.Length && char.IsAsciiDigit((char)bytes[i + len])) len++;
            runs.Add((i, len));
        }
        if (runs.Count == 0) return MutationsOf(file, (start, end, 1));
        return Gen.Elements(runs.ToArray()).SelectMany(run =>
            Gen.ArrayOf(Gen.Elements("0123456789987654321000000000009".ToCharArray()), run.len)
               .Select(digits => new Mutation(file, run.at, digits.Select(c => (byte)c).ToArray(), -1)));
    }

    private static void Apply(Mutation m, Action check)
    {
        using var fs = new FileStream(m.File, FileMode.Open, FileAccess.ReadWrite);
        long length = fs.Length;
        byte[] saved;
        if (m.TruncateTo >= 0)
        {
            saved = new byte[length - m.TruncateTo];
            fs.Position = m.TruncateTo;
            fs.ReadExactly(saved);
            fs.SetLength(m.TruncateTo);
        }
        else
        {
            int n = (int)Math.Min(m.Bytes.Length, length - m.Offset);
            saved = new byte[n];
            fs.Position = m.Offset;
            fs.ReadExactly(saved);
            fs.Position = m.Offset;
            fs.Write(m.Bytes, 0, n);
        }
        fs.Flush();
        try { check(); }
        finally
        {
            if (m.TruncateTo >= 0) { fs.Position = m.TruncateTo; fs.Write(saved); }
            else { fs.Position = m.Offset; fs.Write(saved); }
            fs.Flush();
        }
    }

    /// <summary>Load the model (header, tokenizer, every weight) and run one token: success or FitLMException only.</summary>
    private static void LoadOrCleanError(string path, Mutation m, Dictionary<string, int> outcomes)
    {
        long before = GC.GetAllocatedBytesForCurrentThread();
        string outcome;
        try
        {
            using var lm = LanguageModel.Load(path, 16, 4);
            var logits = new float[lm.Config.Vocab];
            lm.Transformer.Forward([Math.Max(0, lm.Tokenizer.BosId)], 0, logits, 0);
            outcome = "loaded";
        }
        catch (FitLMException e)
        {
            Assert.False(string.IsNullOrWhiteSpace(e.Message));
            Assert.DoesNotContain('\n', e.Message);
            outcome = "error: " + Classify(e.Message);
        }
        catch (Exception e)
        {
            throw new Xunit.Sdk.XunitException($"{m}: {e.GetType().Name} instead of FitLMException: {e.Message}", e);
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.True(allocated < 512L << 20, $"{m}: allocated {allocated >> 20} MiB");
        outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
    }

    private static string Classify(string message)
    {
        var words = message.Split(':', 2);
        var tail = words.Length > 1 ? words[1] : words[0];
        return new string(tail.Trim().TakeWhile(c => !char.IsDigit(c) && c != '\'').ToArray()).Trim();
    }

    private void Report(Dictionary<string, int> outcomes)
    {
        foreach (var (k, v) in outcomes.OrderByDescending(x => x.Value)) output.WriteLine($"{v,5}  {k}");
    }

    [Fact]
    public void MutatedGgufFailsCleanly()
    {
        string source = TestPaths.DemoModel;
        string dir = Directory.CreateTempSubdirectory("fitlm-fuzz-").FullName;
        try
        {
            string file = Path.Combine(dir, "model.gguf");
            File.Copy(source, file);
            long dataOffset, infoStart;
            using (var g = GgufFile.Open(file))
            {
                dataOffset = g.DataOffset;
                long infoBytes = g.Tensors.Sum(t => 8 + System.Text.Encoding.UTF8.GetByteCount(t.Name) + 4 + 8 * t.Shape.Length + 4 + 8);
                infoStart = dataOffset - infoBytes - g.Alignment;
            }
            long length = new FileInfo(file).Length;
            var gen = MutationsOf(file,
                (0, 24, 3),                         // magic, version, counts
                (24, 2048, 3),                      // first metadata keys, types, lengths
                (2048, infoStart, 1),               // tokenizer arrays
                (infoStart, dataOffset, 4),         // tensor directory: names, dims, types, offsets
                (dataOffset, length, 1));           // tensor data
            var outcomes = new Dictionary<string, int>();
            var property = Prop.ForAll(Arb.From(gen), m => Apply(m, () => LoadOrCleanError(file, m, outcomes)));
            Check.One(Config.QuickThrowOnFailure.WithMaxTest(1000).WithQuietOnSuccess(true), property);
            Report(outcomes);
            Assert.True(outcomes.Values.Sum() >= 1000);
            Assert.True(outcomes.Keys.Count(k => k.StartsWith("error")) >= 5, "mutations should hit several distinct checks");
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>
    /// A mixture of experts (synthesized tiny-moe: qwen3moe, 2 layers, 8 experts of 128, top-2): mutations weighted
    /// towards the expert metadata (expert_count, expert_used_count, expert_feed_forward_length) and the tensor
    /// directory, where the 3-D expert stacks and routers are declared.
    /// </summary>
    [Fact]
    public void MutatedMoeGgufFailsCleanly()
    {
        string dir = Directory.CreateTempSubdirectory("fitlm-fuzz-moe-").FullName;
        try
        {
            string file = Path.Combine(dir, "model.gguf");
            FitLM.Conversion.SyntheticModel.Write(file, FitLM.Conversion.SyntheticShape.Parse("tiny-moe"), "q4_0", TestPaths.DemoModel, seed: 4);
            long dataOffset, infoStart;
            using (var g = GgufFile.Open(file))
            {
                dataOffset = g.DataOffset;
                long infoBytes = g.Tensors.Sum(t => 8 + System.Text.Encoding.UTF8.GetByteCount(t.Name) + 4 + 8 * t.Shape.Length + 4 + 8);
                infoStart = dataOffset - infoBytes - g.Alignment;
            }
            long length = new FileInfo(file).Length;
            var header = File.ReadAllBytes(file).AsSpan(0, (int)Math.Min(length, 4096)).ToArray();
            var regions = new List<(long, long, int)>
            {
                (0, 24, 2),                          // magic, version, counts
                (24, 2048, 2),                       // first metadata keys, types, lengths
                (2048, infoStart, 1),                // tokenizer arrays
                (infoStart, dataOffset, 4),          // tensor directory: names, dims (3-D stacks), types, offsets
                (dataOffset, length, 1),             // tensor data
            };
            // Each expert key's type and value (the 12 bytes after its name).
            foreach (var key in new[] { "qwen3moe.expert_count", "qwen3moe.expert_used_count", "qwen3moe.expert_feed_forward_length" })
            {
                int at = header.AsSpan().IndexOf(System.Text.Encoding.UTF8.GetBytes(key));
                Assert.True(at > 0, key);
                regions.Add((at + key.Length, at + key.Length + 12, 3));
            }
            var gen = MutationsOf(file, regions.ToArray());
            var outcomes = new Dictionary<string, int>();
            var property = Prop.ForAll(Arb.From(gen), m => Apply(m, () => LoadOrCleanError(file, m, outcomes)));
            Check.One(Config.QuickThrowOnFailure.WithMaxTest(1000).WithQuietOnSuccess(true), property);
            Report(outcomes);
            Assert.True(outcomes.Values.Sum() >= 1000);
            Assert.True(outcomes.Keys.Count(k => k.StartsWith("error")) >= 5, "mutations should hit several distinct checks");
            Assert.Contains(outcomes.Keys, k => k.Contains("expert"));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void MutatedHuggingFaceFolderFailsCleanly()
    {
        if (TestPaths.Shared is not { } shared) { output.WriteLine("../shared is absent; no Hugging Face folder to mutate"); return; }
        string dir = Directory.CreateTempSubdirectory("fitlm-fuzz-hf-").FullName;
        try
        {
            foreach (var f in Directory.GetFiles(Path.Combine(shared, "models", "pycoder-29m")))
                if (!f.EndsWith("reference.json")) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
            var shards = Directory.GetFiles(dir, "*.safetensors").Order().ToArray();
            var gens = new List<(int, Gen<Mutation>)>();
            foreach (var shard in shards)
            {
                long headerEnd;
                using (var st = SafetensorsFile.Open(shard)) headerEnd = st.DataOffset;
                gens.Add((2, MutationsOf(shard, (0, 8, 2), (8, headerEnd, 6), (headerEnd, new FileInfo(shard).Length, 1))));
                gens.Add((2, NumberRewritesOf(shard, 8, headerEnd)));
            }
            foreach (var json in new[] { "config.json", "model.safetensors.index.json", "tokenizer_config.json" })
            {
                string p = Path.Combine(dir, json);
                gens.Add((1, MutationsOf(p, (0, new FileInfo(p).Length, 1))));
                gens.Add((1, NumberRewritesOf(p, 0, new FileInfo(p).Length)));
            }
            string tok = Path.Combine(dir, "tokenizer.json");
            gens.Add((1, MutationsOf(tok, (0, 4096, 2), (4096, new FileInfo(tok).Length, 1))));
            var outcomes = new Dictionary<string, int>();
            var property = Prop.ForAll(Arb.From(Gen.Frequency(gens.ToArray())), m => Apply(m, () => LoadOrCleanError(dir, m, outcomes)));
            Check.One(Config.QuickThrowOnFailure.WithMaxTest(1000).WithQuietOnSuccess(true), property);
            Report(outcomes);
            Assert.True(outcomes.Values.Sum() >= 1000);
            Assert.True(outcomes.Keys.Count(k => k.StartsWith("error")) >= 5, "mutations should hit several distinct checks");
        }
        finally { Directory.Delete(dir, true); }
    }
}
