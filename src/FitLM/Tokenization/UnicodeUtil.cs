using System.Globalization;

namespace FitLM.Tokenization;

/// <summary>
/// Codepoint classes as llama.cpp's unicode tables define them (one general-category class per
/// codepoint, plus the White_Space property as a separate bit).
/// </summary>
[Flags]
internal enum CpFlags : ushort
{
    None = 0,
    Undefined = 0x0001,
    Number = 0x0002,
    Letter = 0x0004,
    Separator = 0x0008,
    Mark = 0x0010,
    Punctuation = 0x0020,
    Symbol = 0x0040,
    Control = 0x0080,
    CategoryMask = 0x00FF,
    Whitespace = 0x0100,
}

/// <summary>Unicode helpers shared by the pre-tokenizers and the byte-level BPE.</summary>
internal static class UnicodeUtil
{
    private static readonly CpFlags[] Bmp = BuildBmp();

    /// <summary>GPT-2 byte → printable char table (bytes.to_unicode in the original encoder).</summary>
    public static readonly char[] ByteToChar = BuildByteToChar();

    /// <summary>Inverse of <see cref="ByteToChar"/>, indexed by char; -1 where no byte maps.</summary>
    public static readonly short[] CharToByte = BuildCharToByte();

    public static CpFlags Flags(int cp)
    {
        if ((uint)cp < 0x10000) return Bmp[cp];
        if ((uint)cp <= 0x10FFFF) return Compute(cp);
        return CpFlags.Undefined;
    }

    public static bool IsWhitespace(int cp) => cp switch
    {
        >= 0x09 and <= 0x0D => true,
        0x20 or 0x85 or 0xA0 or 0x1680 or 0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000 => true,
        >= 0x2000 and <= 0x200A => true,
        _ => false,
    };

    private static CpFlags Compute(int cp)
    {
        var f = CharUnicodeInfo.GetUnicodeCategory(cp) switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => CpFlags.Letter,
            UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark => CpFlags.Mark,
            UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => CpFlags.Number,
            UnicodeCategory.SpaceSeparator or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator => CpFlags.Separator,
            UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.Surrogate or UnicodeCategory.PrivateUse => CpFlags.Control,
            UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation or UnicodeCategory.OpenPunctuation
                or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
                or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation => CpFlags.Punctuation,
            UnicodeCategory.MathSymbol or UnicodeCategory.CurrencySymbol or UnicodeCategory.ModifierSymbol
                or UnicodeCategory.OtherSymbol => CpFlags.Symbol,
            _ => CpFlags.Undefined,
        };
        if (IsWhitespace(cp)) f |= CpFlags.Whitespace;
        return f;
    }

    private static CpFlags[] BuildBmp()
    {
        var t = new CpFlags[0x10000];
        for (int i = 0; i < t.Length; i++) t[i] = Compute(i);
        return t;
    }

    private static char[] BuildByteToChar()
    {
        var map = new char[256];
        var assigned = new bool[256];
        for (int b = 0x21; b <= 0x7E; b++) { map[b] = (char)b; assigned[b] = true; }
        for (int b = 0xA1; b <= 0xAC; b++) { map[b] = (char)b; assigned[b] = true; }
        for (int b = 0xAE; b <= 0xFF; b++) { map[b] = (char)b; assigned[b] = true; }
        int n = 0;
        for (int b = 0; b < 256; b++)
            if (!assigned[b]) map[b] = (char)(256 + n++);
        return map;
    }

    private static short[] BuildCharToByte()
    {
        var inv = new short[0x200];
        Array.Fill(inv, (short)-1);
        for (int b = 0; b < 256; b++) inv[ByteToChar[b]] = (short)b;
        return inv;
    }

    /// <summary>The byte a GPT-2 byte-level char stands for, or -1.</summary>
    public static int ByteOfChar(int c) => (uint)c < (uint)CharToByte.Length ? CharToByte[c] : -1;

    /// <summary>
    /// Codepoints of a UTF-16 string; unpaired surrogates become U+FFFD (what a UTF-8 encoder
    /// would have handed llama.cpp).
    /// </summary>
    public static int[] ToCodepoints(ReadOnlySpan<char> s, out int count)
    {
        var cps = new int[s.Length];
        int n = 0;
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
            {
                cps[n++] = char.ConvertToUtf32(c, s[i + 1]);
                i++;
            }
            else if (char.IsSurrogate(c)) cps[n++] = 0xFFFD;
            else cps[n++] = c;
        }
        count = n;
        return cps;
    }

    /// <summary>Lower-case mapping for the contraction checks of the llama3 splitter.</summary>
    public static int ToLower(int cp)
    {
        if (cp < 0x80) return cp is >= 'A' and <= 'Z' ? cp + 32 : cp;
        if (cp < 0x10000 && !char.IsSurrogate((char)cp)) return char.ToLowerInvariant((char)cp);
        return cp;
    }

    /// <summary>Appends the UTF-8 encoding of one codepoint.</summary>
    public static int EncodeUtf8(int cp, Span<byte> dst)
    {
        if (cp < 0x80) { dst[0] = (byte)cp; return 1; }
        if (cp < 0x800) { dst[0] = (byte)(0xC0 | (cp >> 6)); dst[1] = (byte)(0x80 | (cp & 0x3F)); return 2; }
        if (cp < 0x10000)
        {
            dst[0] = (byte)(0xE0 | (cp >> 12)); dst[1] = (byte)(0x80 | ((cp >> 6) & 0x3F)); dst[2] = (byte)(0x80 | (cp & 0x3F));
            return 3;
        }
        dst[0] = (byte)(0xF0 | (cp >> 18)); dst[1] = (byte)(0x80 | ((cp >> 12) & 0x3F));
        dst[2] = (byte)(0x80 | ((cp >> 6) & 0x3F)); dst[3] = (byte)(0x80 | (cp & 0x3F));
        return 4;
    }

    /// <summary>Number of UTF-8 bytes of a string (how llama.cpp measures token text length).</summary>
    public static int Utf8Length(string s) => System.Text.Encoding.UTF8.GetByteCount(s);
}
