using System.Globalization;
using System.Text;

namespace FitLM.Chat.Jinja;

/// <summary>Python's datetime.strftime for the directives chat templates use (strftime_now("%d %b %Y") in Llama 3.x).</summary>
internal static class JinjaStrftime
{
    public static string Format(DateTime t, string format)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c != '%' || i + 1 >= format.Length) { sb.Append(c); continue; }
            char d = format[++i];
            sb.Append(d switch
            {
                'd' => t.Day.ToString("00", inv),
                'm' => t.Month.ToString("00", inv),
                'Y' => t.Year.ToString("0000", inv),
                'y' => (t.Year % 100).ToString("00", inv),
                'H' => t.Hour.ToString("00", inv),
                'I' => ((t.Hour + 11) % 12 + 1).ToString("00", inv),
                'M' => t.Minute.ToString("00", inv),
                'S' => t.Second.ToString("00", inv),
                'f' => (t.Ticks % TimeSpan.TicksPerSecond / 10).ToString("000000", inv),
                'p' => t.Hour < 12 ? "AM" : "PM",
                'b' => inv.DateTimeFormat.GetAbbreviatedMonthName(t.Month),
                'B' => inv.DateTimeFormat.GetMonthName(t.Month),
                'a' => inv.DateTimeFormat.GetAbbreviatedDayName(t.DayOfWeek),
                'A' => inv.DateTimeFormat.GetDayName(t.DayOfWeek),
                'j' => t.DayOfYear.ToString("000", inv),
                'w' => ((int)t.DayOfWeek).ToString(inv),
                'e' => t.Day.ToString(inv).PadLeft(2),
                '%' => "%",
                _ => "%" + d,
            });
        }
        return sb.ToString();
    }
}
