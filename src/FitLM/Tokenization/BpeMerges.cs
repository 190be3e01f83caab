using System.Buffers;

namespace FitLM.Tokenization;

/// <summary>
/// Rank-driven BPE merging of one pre-token word (llm_tokenizer_bpe_session): repeatedly merge the adjacent
/// pair with the lowest merge rank (leftmost on ties). Strings are interned as "piece" ids (vocabulary ids,
/// then extra ids for merge parts/results that are not tokens) so a merge lookup is one hash probe.
/// </summary>
internal sealed class BpeMerges
{
    private readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _piecesSpan;
    private readonly Dictionary<long, long> _merges;   // (left piece, right piece) → (rank, result piece)
    private readonly int[] _charPiece;                 // single BMP char → piece id, -1 if none
    private readonly int _vocab;

    public BpeMerges(Dictionary<string, int> tokenToId, int vocab, List<(string, string)> merges)
    {
        _vocab = vocab;
        var pieces = new Dictionary<string, int>(tokenToId, StringComparer.Ordinal);
        int nextId = vocab;
        int Get(string s)
        {
            if (!pieces.TryGetValue(s, out int id)) { id = nextId++; pieces.Add(s, id); }
            return id;
        }
        _merges = new Dictionary<long, long>(merges.Count, PairComparer.Instance);
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (a, b) = merges[rank];
            int ia = Get(a), ib = Get(b), ir = Get(a + b);
            _merges.TryAdd(((long)ia << 32) | (uint)ib, ((long)rank << 32) | (uint)ir);
        }
        _charPiece = new int[0x10000];
        Array.Fill(_charPiece, -1);
        foreach (var (s, id) in pieces)
            if (s.Length == 1) _charPiece[s[0]] = id;
        _piecesSpan = pieces.GetAlternateLookup<ReadOnlySpan<char>>();
    }

    /// <summary>long.GetHashCode (hi ^ lo) collides badly for id pairs; mix the bits instead.</summary>
    private sealed class PairComparer : IEqualityComparer<long>
    {
        public static readonly PairComparer Instance = new();
        public bool Equals(long x, long y) => x == y;
        public int GetHashCode(long x) => (int)(((ulong)x * 0x9E3779B97F4A7C15UL) >> 32);
    }

    private readonly record struct Bigram(int Left, int Right, int LeftLen, int RightLen, int Result);

    public void Merge(ReadOnlySpan<char> word, List<int> output, Tokenizer tok)
    {
        int n = word.Length;
        if (n == 0) return;
        var pool = ArrayPool<int>.Shared;
        int[] start = pool.Rent(n), len = pool.Rent(n), piece = pool.Rent(n), prev = pool.Rent(n), next = pool.Rent(n);
        try
        {
            int count = 0;
            for (int i = 0; i < n;)
            {
                int l = char.IsHighSurrogate(word[i]) && i + 1 < n && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
                start[count] = i;
                len[count] = l;
                piece[count] = l == 1 ? _charPiece[word[i]] : _piecesSpan.TryGetValue(word.Slice(i, l), out int p) ? p : -1;
                count++;
                i += l;
            }
            for (int k = 0; k < count; k++) { prev[k] = k - 1; next[k] = k + 1 < count ? k + 1 : -1; }

            if (count > 1)
            {
                var queue = new PriorityQueue<Bigram, long>();
                void Add(int left, int right)
                {
                    if (left < 0 || right < 0) return;
                    int pl = piece[left], pr = piece[right];
                    if (pl < 0 || pr < 0) return;
                    if (!_merges.TryGetValue(((long)pl << 32) | (uint)pr, out long m)) return;
                    long rank = m >> 32;
                    queue.Enqueue(new Bigram(left, right, len[left], len[right], (int)m), (rank << 32) | (uint)left);
                }
                for (int k = 1; k < count; k++) Add(k - 1, k);

                while (queue.TryDequeue(out var bg, out _))
                {
                    int l = bg.Left, r = bg.Right;
                    // outdated if either side changed since the pair was queued (symbols only ever grow)
                    if (len[l] != bg.LeftLen || len[r] != bg.RightLen) continue;
                    len[l] += len[r];
                    len[r] = 0;
                    piece[l] = bg.Result;
                    next[l] = next[r];
                    if (next[r] >= 0) prev[next[r]] = l;
                    Add(prev[l], l);
                    Add(l, next[l]);
                }
            }

            for (int k = 0; k != -1; k = next[k])
            {
                int p = piece[k];
                if (p >= 0 && p < _vocab) output.Add(p);
                else tok.BpeFallback(word.Slice(start[k], len[k]), output);
            }
        }
        finally
        {
            pool.Return(start); pool.Return(len); pool.Return(piece); pool.Return(prev); pool.Return(next);
        }
    }
}
